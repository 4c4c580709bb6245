//! Social-media pre-tokeniser (filled in below the stub).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::Vocab;
use crate::normalize::{Normalized, NormalizerConfig, Scratch};
use crate::pretokenize::{split_bert, Span};
use crate::tokenizer::Offsets;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SocialConfig {
    pub replace_urls: bool,
    pub replace_mentions: bool,
    pub replace_numbers: bool,
    pub shorten_elongations: bool,
}

impl SocialConfig {
    /// The placeholder tokens the replace options need in the vocabulary.
    pub fn placeholders(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.replace_urls {
            out.push(URL_TOKEN);
        }
        if self.replace_mentions {
            out.push(USER_TOKEN);
        }
        if self.replace_numbers {
            out.push(NUMBER_TOKEN);
        }
        out
    }
}

pub const URL_TOKEN: &str = "[URL]";
pub const USER_TOKEN: &str = "[USER]";
pub const NUMBER_TOKEN: &str = "[NUM]";

#[derive(Debug, Default)]
pub struct Workspace;

#[derive(Debug, Clone)]
pub struct SocialScanner {
    cfg: SocialConfig,
}

impl SocialScanner {
    pub fn new(cfg: SocialConfig, _vocab: &Vocab) -> Result<Self> {
        Ok(SocialScanner { cfg })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn split(
        &self,
        segment: &str,
        char_base: u32,
        normalizer: &NormalizerConfig,
        normalized: &mut Normalized,
        scratch: &mut Scratch,
        words: &mut Vec<Span>,
        _fixed: &mut Vec<(usize, u32, Offsets)>,
        _ws: &mut Workspace,
    ) {
        let _ = &self.cfg;
        let byte0 = normalized.text.len();
        let char0 = normalized.origins.len() as u32;
        normalizer.normalize_into(segment, char_base, normalized, scratch);
        split_bert(&normalized.text[byte0..], byte0 as u32, char0, words);
    }
}

//! Emoji spelled as words (the pre-tokeniser option `spell_emoji`), for vocabularies that have
//! no emoji: BERT's uncased vocabulary maps 😍 and 🎉 to `[UNK]`, and with `spell_emoji` they
//! reach the model as "smiling face with heart-eyes" and "party popper".
//!
//! The names are the CLDR short names of Unicode's emoji-test.txt, as generated into the
//! `emojis` crate (Unicode 18 emoji data), never typed by hand. A sequence (one grapheme
//! cluster: ZWJ sequences, skin tones, flags, keycaps, tag flags) is looked up whole, then
//! without its variation selectors. A sequence with no name of its own is spelled from its
//! parts: it is cut at each ZWJ, and each part gives its own name or, failing that, the name of
//! its first character (its base emoji: "😍🏽", a skin tone on an emoji that takes none, is
//! spelled "smiling face with heart-eyes"); parts without any name are dropped. A sequence in
//! which nothing has a name (a lone regional indicator, a pictograph that is not an emoji) is
//! left as it is.
//!
//! The name is then normalised like the rest of the text (lowercased, accents stripped as the
//! normaliser says) and split by BERT's rules, so "heart-eyes" gives "heart", "-", "eyes" and
//! "flag: United States" gives "flag", ":", "united", "states". An emoji the vocabulary has as a
//! token is kept as it is (MiniLM's "♥", "©", "™"): only what would otherwise be unknown is
//! spelled.
//!
//! Offsets: every character of a name points into its emoji's span: the last character of each
//! word at the emoji's last character, the others at its first, so a word of the name covers
//! the whole emoji sequence.

use std::borrow::Cow;

use crate::model::Vocab;
use crate::normalize::{is_bert_whitespace, Normalized, NormalizerConfig, Scratch};
use crate::pretokenize::is_bert_punctuation;

const ZWJ: char = '\u{200D}';

fn is_variation_selector(c: char) -> bool {
    matches!(c, '\u{FE0E}' | '\u{FE0F}')
}

/// The CLDR name of exactly `seq`, or of `seq` without its variation selectors.
fn lookup(seq: &str) -> Option<&'static str> {
    if let Some(e) = emojis::get(seq) {
        return Some(e.name());
    }
    if seq.contains(is_variation_selector) {
        let bare: String = seq.chars().filter(|&c| !is_variation_selector(c)).collect();
        return emojis::get(&bare).map(emojis::Emoji::name);
    }
    None
}

/// The words `seq` (one emoji sequence) is spelled as, or None when nothing in it has a name
/// (see the module docs for the fall-backs).
pub fn name(seq: &str) -> Option<Cow<'static, str>> {
    if let Some(n) = lookup(seq) {
        return Some(Cow::Borrowed(n));
    }
    let mut parts = seq.split(ZWJ).filter_map(|part| {
        lookup(part).or_else(|| {
            let first = part.chars().next()?;
            lookup(&part[..first.len_utf8()])
        })
    });
    let first = parts.next()?;
    match parts.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut out = format!("{first} {second}");
            for n in parts {
                out.push(' ');
                out.push_str(n);
            }
            Some(Cow::Owned(out))
        }
    }
}

/// What spelling needs from the tokenizer: its normaliser (for the names) and its vocabulary
/// (emoji it knows are kept).
#[derive(Debug, Clone, Copy)]
pub struct Speller<'a> {
    pub normalizer: &'a NormalizerConfig,
    pub vocab: &'a Vocab,
}

impl Speller<'_> {
    /// The name `seq` is spelled as, or None to keep it: it has no name, or the vocabulary has
    /// it as a token. `as_written`: the model would see `seq` unnormalised (the social
    /// pre-tokeniser keeps emoji raw); otherwise its normalised form is what the vocabulary must
    /// hold.
    pub fn spelling(
        &self,
        seq: &str,
        as_written: bool,
        tmp: &mut Normalized,
        scratch: &mut Scratch,
    ) -> Option<Cow<'static, str>> {
        let known = if as_written {
            self.vocab.id(seq).is_some()
        } else {
            tmp.clear();
            self.normalizer.normalize_into(seq, 0, tmp, scratch);
            self.vocab.id(&tmp.text).is_some()
        };
        if known {
            None
        } else {
            name(seq)
        }
    }

    /// Append ` name ` (normalised, with spaces around it so that it never glues to the text
    /// beside the emoji) to `out`; `[start, end)` is the emoji's character span in the caller's
    /// text.
    pub fn push(
        &self,
        name: &str,
        start: u32,
        end: u32,
        out: &mut Normalized,
        tmp: &mut Normalized,
        scratch: &mut Scratch,
    ) {
        tmp.clear();
        self.normalizer.normalize_into(name, 0, tmp, scratch);
        out.text.push(' ');
        out.origins.push(start);
        let mut chars = tmp.text.chars().peekable();
        while let Some(c) = chars.next() {
            let word_end = is_bert_punctuation(c)
                || chars
                    .peek()
                    .is_none_or(|&n| is_bert_whitespace(n) || is_bert_punctuation(n));
            out.text.push(c);
            out.origins.push(if word_end { end - 1 } else { start });
        }
        out.text.push(' ');
        out.origins.push(start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spelled(seq: &str) -> Option<String> {
        name(seq).map(Cow::into_owned)
    }

    #[test]
    fn names_from_unicode_data() {
        assert_eq!(
            spelled("😍").as_deref(),
            Some("smiling face with heart-eyes")
        );
        assert_eq!(spelled("🎉").as_deref(), Some("party popper"));
        assert_eq!(spelled("❤\u{fe0f}").as_deref(), Some("red heart"));
        assert_eq!(spelled("❤").as_deref(), Some("red heart")); // unqualified
        assert_eq!(spelled("😂").as_deref(), Some("face with tears of joy"));
    }

    #[test]
    fn sequences_resolve_whole() {
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
        assert_eq!(
            spelled(family).as_deref(),
            Some("family: man, woman, girl, boy")
        );
        assert_eq!(
            spelled("👍🏽").as_deref(),
            Some("thumbs up: medium skin tone")
        );
        assert_eq!(spelled("🇺🇸").as_deref(), Some("flag: United States"));
        assert_eq!(spelled("🇫🇷").as_deref(), Some("flag: France"));
        let england = "🏴\u{e0067}\u{e0062}\u{e0065}\u{e006e}\u{e0067}\u{e007f}";
        assert_eq!(spelled(england).as_deref(), Some("flag: England"));
        assert_eq!(spelled("1\u{fe0f}\u{20e3}").as_deref(), Some("keycap: 1"));
        // A fully-qualified sequence typed without its variation selector.
        assert_eq!(spelled("❤\u{200d}🔥").as_deref(), Some("heart on fire"));
    }

    #[test]
    fn unnamed_sequences_fall_back_to_their_parts() {
        // A skin tone on an emoji that takes none: the base emoji's name.
        assert_eq!(
            spelled("😍🏽").as_deref(),
            Some("smiling face with heart-eyes")
        );
        // A ZWJ sequence Unicode does not define: the names of its parts.
        assert_eq!(spelled("🐱\u{200d}🍕").as_deref(), Some("cat face pizza"));
        // A subdivision flag Unicode does not list: its base, the black flag.
        let texas = "🏴\u{e0075}\u{e0073}\u{e0074}\u{e0078}\u{e007f}";
        assert_eq!(spelled(texas).as_deref(), Some("black flag"));
        // Nothing named: kept as written.
        assert_eq!(spelled("🇦"), None);
        assert_eq!(spelled("\u{1F10D}"), None); // circled zero with slash: not an emoji
        assert_eq!(spelled("x"), None);
    }
}

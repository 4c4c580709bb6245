//! The pipeline: special tokens matched in the raw text -> normalise -> pre-tokenise -> model ->
//! `[CLS] ... [SEP]`. One `Tokenizer` is immutable once built, so threads share it freely.

use serde::{Deserialize, Serialize};

use crate::emoji::Speller;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::normalize::{Normalized, NormalizerConfig, Scratch};
use crate::pretokenize::{split_bert, Offsets, Span};
use crate::social::{emoji_at, SocialConfig, SocialScanner};

/// How text is cut into words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PreTokenizerConfig {
    /// BERT's basic tokenizer (whitespace + punctuation).
    Bert(BertConfig),
    /// URLs, e-mails, mentions, hashtags, numbers, emoticons and emoji kept whole.
    Social(SocialConfig),
}

/// Options of BERT's pre-tokeniser; the default is BERT's own (exact Hugging Face parity).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    /// Emoji sequences the vocabulary lacks are spelled as their CLDR names (`emoji.rs`).
    /// Left out of saved files when off, so files from before the option read the same.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spell_emoji: bool,
}

impl PreTokenizerConfig {
    /// BERT's basic tokenizer, as BERT has it.
    pub fn bert() -> Self {
        PreTokenizerConfig::Bert(BertConfig::default())
    }

    /// Whether emoji the vocabulary lacks are spelled as their names.
    pub fn spell_emoji(&self) -> bool {
        match self {
            PreTokenizerConfig::Bert(cfg) => cfg.spell_emoji,
            PreTokenizerConfig::Social(cfg) => cfg.spell_emoji,
        }
    }
}

/// The names of the special tokens by role; a role whose token is not in the vocabulary is off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecialTokens {
    pub pad: String,
    pub unk: String,
    pub cls: String,
    pub sep: String,
    pub mask: String,
    /// Further tokens matched whole in the raw text (e.g. the social placeholders).
    pub extra: Vec<String>,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        SpecialTokens {
            pad: "[PAD]".into(),
            unk: "[UNK]".into(),
            cls: "[CLS]".into(),
            sep: "[SEP]".into(),
            mask: "[MASK]".into(),
            extra: Vec::new(),
        }
    }
}

impl SpecialTokens {
    /// Every special token, roles first, without duplicates.
    pub fn all(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in [&self.pad, &self.unk, &self.cls, &self.sep, &self.mask]
            .into_iter()
            .chain(self.extra.iter())
        {
            if !t.is_empty() && !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }
}

/// Per-thread buffers reused across posts.
#[derive(Debug, Default)]
pub struct Workspace {
    normalized: Normalized,
    scratch: Scratch,
    words: Vec<Span>,
    pieces: Vec<(u32, u32, u32)>,
    social: crate::social::Workspace,
    /// An emoji's normalised form or name, while spelling emoji.
    spell: Normalized,
}

/// A word ready for the model: its span in the normalised text, or a fixed token id.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unit {
    Word(Span),
    Token(u32, Offsets),
}

#[derive(Debug, Clone)]
pub struct Tokenizer {
    pub normalizer: NormalizerConfig,
    pub pre_tokenizer: PreTokenizerConfig,
    pub model: Model,
    pub special: SpecialTokens,
    /// Special tokens present in the vocabulary, longest first, matched in the raw text.
    added: Vec<(String, u32)>,
    /// `first_byte[b]`: some special token starts with byte `b` (a quick skip while scanning).
    first_byte: [bool; 256],
    pad_id: Option<u32>,
    cls_id: Option<u32>,
    sep_id: Option<u32>,
    special_ids: Vec<u32>,
    social: Option<SocialScanner>,
}

impl Tokenizer {
    pub fn new(
        normalizer: NormalizerConfig,
        pre_tokenizer: PreTokenizerConfig,
        model: Model,
        special: SpecialTokens,
    ) -> Result<Self> {
        if model.unk_token() != special.unk {
            return Err(Error::Input(format!(
                "the model's unknown token {:?} differs from special_tokens.unk {:?}",
                model.unk_token(),
                special.unk
            )));
        }
        let vocab = model.vocab();
        let mut added: Vec<(String, u32)> = special
            .all()
            .into_iter()
            .filter_map(|t| vocab.id(&t).map(|id| (t, id)))
            .collect();
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        let mut first_byte = [false; 256];
        for (t, _) in &added {
            first_byte[t.as_bytes()[0] as usize] = true;
        }
        let mut special_ids: Vec<u32> = added.iter().map(|&(_, id)| id).collect();
        special_ids.sort_unstable();
        let social = match &pre_tokenizer {
            PreTokenizerConfig::Social(cfg) => Some(SocialScanner::new(cfg.clone(), vocab)?),
            PreTokenizerConfig::Bert(_) => None,
        };
        Ok(Tokenizer {
            pad_id: vocab.id(&special.pad),
            cls_id: vocab.id(&special.cls),
            sep_id: vocab.id(&special.sep),
            normalizer,
            pre_tokenizer,
            model,
            special,
            added,
            first_byte,
            special_ids,
            social,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.model.vocab().len()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.model.vocab().id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.model.vocab().token(id)
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    pub fn cls_id(&self) -> Option<u32> {
        self.cls_id
    }

    pub fn sep_id(&self) -> Option<u32> {
        self.sep_id
    }

    pub fn unk_id(&self) -> u32 {
        self.model.unk_id()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    /// How many ids `add_special_tokens` adds, or an error naming the missing token.
    pub fn num_special_to_add(&self) -> Result<usize> {
        match (self.cls_id, self.sep_id) {
            (Some(_), Some(_)) => Ok(2),
            _ => Err(Error::Input(format!(
                "add_special_tokens=True needs {:?} and {:?} in the vocabulary; pass \
                 add_special_tokens=False or use a vocabulary that has them",
                self.special.cls, self.special.sep
            ))),
        }
    }

    /// Find the next special token in `text[from..]`: `(byte_start, byte_end, id)`.
    fn next_added(&self, text: &str, from: usize) -> Option<(usize, usize, u32)> {
        if self.added.is_empty() {
            return None;
        }
        let bytes = text.as_bytes();
        let mut i = from;
        while i < bytes.len() {
            // Skip quickly to a byte that starts some special token, then try them longest first.
            match bytes[i..].iter().position(|&b| self.first_byte[b as usize]) {
                Some(k) => i += k,
                None => return None,
            }
            for (t, id) in &self.added {
                if bytes[i..].starts_with(t.as_bytes()) {
                    return Some((i, i + t.len(), *id));
                }
            }
            i += 1;
        }
        None
    }

    /// The speller, when the pre-tokeniser spells emoji out.
    fn speller(&self) -> Option<Speller<'_>> {
        self.pre_tokenizer.spell_emoji().then(|| Speller {
            normalizer: &self.normalizer,
            vocab: self.model.vocab(),
        })
    }

    /// Normalise `segment` into `ws.normalized` with each emoji sequence the vocabulary lacks
    /// spelled as its name (BERT's pre-tokeniser with `spell_emoji`). Emoji are found in the raw
    /// text: clean-up would delete the ZWJ and variation selectors that hold a sequence together.
    fn normalize_spelling_emoji(
        &self,
        speller: &Speller<'_>,
        segment: &str,
        char_base: u32,
        ws: &mut Workspace,
    ) {
        let (mut plain, mut plain_char) = (0usize, char_base); // the text not yet normalised
        let (mut i, mut ci) = (0usize, char_base);
        while i < segment.len() {
            let Some(end) = emoji_at(segment, i) else {
                let c = segment[i..].chars().next().unwrap_or(' ');
                i += c.len_utf8();
                ci += 1;
                continue;
            };
            let seq = &segment[i..end];
            let n = seq.chars().count() as u32;
            if let Some(name) = speller.spelling(seq, false, &mut ws.spell, &mut ws.scratch) {
                self.normalizer.normalize_into(
                    &segment[plain..i],
                    plain_char,
                    &mut ws.normalized,
                    &mut ws.scratch,
                );
                speller.push(
                    &name,
                    ci,
                    ci + n,
                    &mut ws.normalized,
                    &mut ws.spell,
                    &mut ws.scratch,
                );
                plain = end;
                plain_char = ci + n;
            }
            i = end;
            ci += n;
        }
        self.normalizer.normalize_into(
            &segment[plain..],
            plain_char,
            &mut ws.normalized,
            &mut ws.scratch,
        );
    }

    /// Cut `text` into model units (words of the normalised text, or fixed ids), filling
    /// `ws.normalized` and returning units through `f`.
    fn units(&self, text: &str, ws: &mut Workspace, mut f: impl FnMut(&Workspace, Unit)) {
        ws.normalized.clear();
        let mut from = 0; // byte
        let mut char_base = 0u32;
        loop {
            let next = self.next_added(text, from);
            let seg_end = next.map_or(text.len(), |(s, _, _)| s);
            let segment = &text[from..seg_end];
            ws.words.clear();
            let mut fixed: Vec<(usize, u32, Offsets)> = Vec::new();
            let speller = self.speller();
            match &self.social {
                None => {
                    let byte0 = ws.normalized.text.len();
                    let char0 = ws.normalized.origins.len() as u32;
                    match &speller {
                        Some(sp) => self.normalize_spelling_emoji(sp, segment, char_base, ws),
                        None => self.normalizer.normalize_into(
                            segment,
                            char_base,
                            &mut ws.normalized,
                            &mut ws.scratch,
                        ),
                    }
                    split_bert(
                        &ws.normalized.text[byte0..],
                        byte0 as u32,
                        char0,
                        &mut ws.words,
                    );
                }
                Some(social) => {
                    social.split(
                        segment,
                        char_base,
                        speller.as_ref(),
                        &self.normalizer,
                        &mut ws.normalized,
                        &mut ws.scratch,
                        &mut ws.words,
                        &mut fixed,
                        &mut ws.social,
                    );
                }
            }
            let mut fixed = fixed.into_iter().peekable();
            for (k, w) in ws.words.iter().enumerate() {
                while let Some(&(at, id, off)) = fixed.peek() {
                    if at > k {
                        break;
                    }
                    f(ws, Unit::Token(id, off));
                    fixed.next();
                }
                f(ws, Unit::Word(*w));
            }
            for (_, id, off) in fixed {
                f(ws, Unit::Token(id, off));
            }
            char_base += segment.chars().count() as u32;
            match next {
                Some((s, e, id)) => {
                    let n = text[s..e].chars().count() as u32;
                    f(ws, Unit::Token(id, (char_base, char_base + n)));
                    char_base += n;
                    from = e;
                }
                None => break,
            }
        }
    }

    /// Encode one text, appending ids (and character offsets when asked) without specials.
    pub fn encode_into(
        &self,
        text: &str,
        ws: &mut Workspace,
        ids: &mut Vec<u32>,
        mut offsets: Option<&mut Vec<Offsets>>,
    ) {
        let mut pieces = std::mem::take(&mut ws.pieces);
        self.units(text, ws, |ws, unit| match unit {
            Unit::Token(id, off) => {
                ids.push(id);
                if let Some(o) = offsets.as_deref_mut() {
                    o.push(off);
                }
            }
            Unit::Word(w) => {
                let word = &ws.normalized.text[w.start as usize..w.end as usize];
                pieces.clear();
                self.model
                    .tokenize(word, (w.char_end - w.char_start) as usize, &mut pieces);
                ids.extend(pieces.iter().map(|&(id, _, _)| id));
                if let Some(o) = offsets.as_deref_mut() {
                    let origins = &ws.normalized.origins;
                    let mut ci = w.char_start as usize;
                    let mut bi = 0usize;
                    for &(_, s, e) in pieces.iter() {
                        // Walk characters from the previous piece's end to this piece's span.
                        ci += word[bi..s as usize].chars().count();
                        let n = word[s as usize..e as usize].chars().count();
                        let first = origins[ci];
                        let last = origins[ci + n - 1];
                        o.push((first, last + 1));
                        ci += n;
                        bi = e as usize;
                    }
                }
            }
        });
        ws.pieces = pieces;
    }

    /// Encode one text to ids, with `[CLS] ... [SEP]` when `add_special_tokens`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut ws = Workspace::default();
        if add_special_tokens {
            self.num_special_to_add()?;
            ids.push(self.cls_id.unwrap_or_default());
        }
        self.encode_into(text, &mut ws, &mut ids, None);
        if add_special_tokens {
            ids.push(self.sep_id.unwrap_or_default());
        }
        Ok(ids)
    }

    /// The pre-tokenised pieces (normalised text) with character spans in `text`.
    pub fn pre_tokenize(&self, text: &str) -> Vec<(String, Offsets)> {
        let mut ws = Workspace::default();
        let mut out = Vec::new();
        self.units(text, &mut ws, |ws, unit| match unit {
            Unit::Token(id, off) => {
                out.push((self.id_to_token(id).unwrap_or_default().to_string(), off));
            }
            Unit::Word(w) => {
                let word = &ws.normalized.text[w.start as usize..w.end as usize];
                let origins = &ws.normalized.origins;
                let first = origins[w.char_start as usize];
                let last = origins[w.char_end as usize - 1];
                out.push((word.to_string(), (first, last + 1)));
            }
        });
        out
    }

    /// Words of `text` as strings, for training (fixed tokens are skipped).
    pub fn words(&self, text: &str, ws: &mut Workspace, mut f: impl FnMut(&str)) {
        self.units(text, ws, |ws, unit| {
            if let Unit::Word(w) = unit {
                f(&ws.normalized.text[w.start as usize..w.end as usize]);
            }
        });
    }

    /// Turn ids back into text: WordPiece continuations are glued, specials optionally skipped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.model.vocab();
        let prefix = self.model.continuation_prefix().filter(|p| !p.is_empty());
        let mut out = String::new();
        for &id in ids {
            let token = vocab.token(id).ok_or_else(|| {
                Error::Input(format!(
                    "token id {id} is out of range; the vocabulary has {} tokens (ids 0..{})",
                    vocab.len(),
                    vocab.len().saturating_sub(1)
                ))
            })?;
            if skip_special_tokens && self.is_special(id) {
                continue;
            }
            match prefix.and_then(|p| token.strip_prefix(p)) {
                Some(rest) if !out.is_empty() => out.push_str(rest),
                _ => {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(token);
                }
            }
        }
        Ok(cleanup(&out))
    }
}

/// BERT's decoding clean-up: no space before punctuation and English contractions.
fn cleanup(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" do not", " don't")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Vocab, WordPiece};

    fn tiny() -> Tokenizer {
        let tokens = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "!", ",", "don", "'",
            "t", "un", "##able",
        ];
        let vocab = Vocab::new(tokens.iter().map(|s| s.to_string()).collect()).unwrap();
        Tokenizer::new(
            NormalizerConfig::default(),
            PreTokenizerConfig::bert(),
            Model::WordPiece(WordPiece::new(vocab, "[UNK]", "##", 100).unwrap()),
            SpecialTokens::default(),
        )
        .unwrap()
    }

    #[test]
    fn special_tokens_match_in_raw_text_only_when_exact() {
        let tok = tiny();
        assert_eq!(
            tok.encode("hello[MASK] [mask]", false).unwrap(),
            [5, 4, 1, 1, 1]
        );
        let pieces = tok.pre_tokenize("Hi [SEP]!");
        assert_eq!(pieces[1], ("[SEP]".to_string(), (3, 8)));
    }

    #[test]
    fn offsets_follow_pieces() {
        let tok = tiny();
        let (mut ids, mut offs) = (Vec::new(), Vec::new());
        tok.encode_into(
            "ÚNABLE, world",
            &mut Workspace::default(),
            &mut ids,
            Some(&mut offs),
        );
        assert_eq!(ids, [12, 13, 8, 6]);
        assert_eq!(offs, [(0, 2), (2, 6), (6, 7), (8, 13)]);
    }

    /// A BERT-uncased-like vocabulary with the words of a few emoji names but no emoji except
    /// "♥" (as MiniLM's, which has ♥ © ™ and no pictographs).
    fn spelling(spell_emoji: bool) -> Tokenizer {
        let tokens = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "love", "it", "smiling", "face", "with",
            "heart", "-", "eyes", "party", "popper", "family", ":", "man", ",", "woman", "girl",
            "boy", "thumbs", "up", "medium", "skin", "tone", "flag", "united", "states", "red",
            "keycap", "1", "♥", "x", "france", "cat", "pizza",
        ];
        let vocab = Vocab::new(tokens.iter().map(|s| s.to_string()).collect()).unwrap();
        Tokenizer::new(
            NormalizerConfig::default(),
            PreTokenizerConfig::Bert(BertConfig { spell_emoji }),
            Model::WordPiece(WordPiece::new(vocab, "[UNK]", "##", 100).unwrap()),
            SpecialTokens::default(),
        )
        .unwrap()
    }

    fn words(tok: &Tokenizer, text: &str) -> Vec<String> {
        tok.pre_tokenize(text).into_iter().map(|(w, _)| w).collect()
    }

    #[test]
    fn spell_emoji_spells_names_in_words() {
        let tok = spelling(true);
        assert_eq!(
            words(&tok, "Love it😍🎉"),
            ["love", "it", "smiling", "face", "with", "heart", "-", "eyes", "party", "popper"]
        );
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
        assert_eq!(
            words(&tok, family),
            ["family", ":", "man", ",", "woman", ",", "girl", ",", "boy"]
        );
        assert_eq!(
            words(&tok, "👍🏽"),
            ["thumbs", "up", ":", "medium", "skin", "tone"]
        );
        assert_eq!(
            words(&tok, "🇺🇸🇫🇷"),
            ["flag", ":", "united", "states", "flag", ":", "france"]
        );
        assert_eq!(words(&tok, "x1\u{fe0f}\u{20e3}"), ["x", "keycap", ":", "1"]);
        assert_eq!(words(&tok, "❤\u{fe0f}"), ["red", "heart"]);
        // Unnamed: the parts of a ZWJ sequence Unicode does not define.
        assert_eq!(words(&tok, "🐱\u{200d}🍕"), ["cat", "face", "pizza"]);
        let ids = tok.encode("love it 😍", false).unwrap();
        assert!(!ids.contains(&tok.unk_id()), "{ids:?}");
    }

    #[test]
    fn spell_emoji_keeps_what_the_vocabulary_has_or_cannot_name() {
        let tok = spelling(true);
        assert_eq!(words(&tok, "love ♥ x"), ["love", "♥", "x"]); // "♥" is a token
                                                                 // A lone regional indicator has no name: kept as written, glued to its word as in BERT.
        assert_eq!(words(&tok, "x🇦 it"), ["x🇦", "it"]);
    }

    #[test]
    fn spell_emoji_off_is_bert() {
        let (off, on) = (spelling(false), spelling(true));
        let text = "Love it😍 👍🏽 🇺🇸 ♥, x";
        assert_eq!(
            words(&off, text),
            ["love", "it😍", "👍🏽", "🇺🇸", "♥", ",", "x"]
        );
        assert_eq!(
            off.encode(text, true).unwrap(),
            [2, 5, 1, 1, 1, 33, 18, 34, 3]
        );
        // Text without emoji: the same ids and offsets either way.
        let plain = "Love it, X: Heart-eyes!";
        let run = |tok: &Tokenizer| {
            let (mut ids, mut offs) = (Vec::new(), Vec::new());
            tok.encode_into(plain, &mut Workspace::default(), &mut ids, Some(&mut offs));
            (ids, offs)
        };
        assert_eq!(run(&on), run(&off));
    }

    #[test]
    fn spelled_words_point_at_their_emoji() {
        let tok = spelling(true);
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦"; // 7 characters
        let text = format!("it {family}😍");
        let pieces = tok.pre_tokenize(&text);
        assert_eq!(pieces[1], ("family".to_string(), (3, 10)));
        assert_eq!(pieces[2], (":".to_string(), (9, 10)));
        assert_eq!(pieces.last().unwrap(), &("eyes".to_string(), (10, 11)));
        let (mut ids, mut offs) = (Vec::new(), Vec::new());
        tok.encode_into(&text, &mut Workspace::default(), &mut ids, Some(&mut offs));
        assert_eq!(offs[1], (3, 10));
        assert_eq!(ids.len(), offs.len());
    }

    #[test]
    fn decode_glues_continuations_and_cleans_up() {
        let tok = tiny();
        assert_eq!(
            tok.decode(&[2, 12, 13, 8, 6, 7, 3], true).unwrap(),
            "unable, world!"
        );
        assert_eq!(tok.decode(&[9, 10, 11], true).unwrap(), "don't");
        assert_eq!(tok.decode(&[2, 5], false).unwrap(), "[CLS] hello");
        assert!(tok.decode(&[99], true).is_err());
    }
}

/// The social pre-tokeniser's tests. They drive it through `Tokenizer` (special tokens,
/// normalisation and the vocabulary take part in what it yields), so they live here rather than
/// in `social.rs`, which must not depend on this module.
#[cfg(test)]
mod social_tests {
    use super::*;
    use crate::model::{Vocab, WordLevel};

    fn social(cfg: SocialConfig) -> Tokenizer {
        let special = SpecialTokens {
            extra: cfg.placeholders().iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let vocab = Vocab::new(special.all()).unwrap();
        Tokenizer::new(
            NormalizerConfig::default(),
            PreTokenizerConfig::Social(cfg),
            Model::WordLevel(WordLevel::new(vocab, "[UNK]").unwrap()),
            special,
        )
        .unwrap()
    }

    fn pieces(tok: &Tokenizer, text: &str) -> Vec<String> {
        tok.pre_tokenize(text).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn keeps_social_units_whole() {
        let tok = social(SocialConfig::default());
        assert_eq!(
            pieces(&tok, "See https://t.co/AbC?x=1, www.site.org and bit.ly/x!"),
            [
                "see",
                "https://t.co/abc?x=1",
                ",",
                "www.site.org",
                "and",
                "bit.ly/x",
                "!"
            ]
        );
        assert_eq!(
            pieces(&tok, "@JohnDoe mail me: john.doe@mail.com #100DaysOfCode"),
            [
                "@johndoe",
                "mail",
                "me",
                ":",
                "john.doe@mail.com",
                "#100daysofcode"
            ]
        );
        assert_eq!(
            pieces(&tok, "1,000,000 and 3.14 or 2nd"),
            ["1,000,000", "and", "3.14", "or", "2nd"]
        );
        assert_eq!(
            pieces(&tok, "ok :-) :D <3 XD ^_^"),
            ["ok", ":-)", ":D", "<3", "XD", "^_^"]
        );
    }

    #[test]
    fn emoji_sequences_are_single_pieces() {
        let tok = social(SocialConfig::default());
        let family = "👨\u{200d}👩\u{200d}👧\u{200d}👦";
        let text = format!("love😍 {family}👍🏽🇺🇸❤\u{fe0f} 1\u{fe0f}\u{20e3}");
        assert_eq!(
            pieces(&tok, &text),
            [
                "love",
                "😍",
                family,
                "👍🏽",
                "🇺🇸",
                "❤\u{fe0f}",
                "1\u{fe0f}\u{20e3}"
            ]
        );
        let spans: Vec<Offsets> = tok
            .pre_tokenize(&text)
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(spans[2], (6, 13));
    }

    #[test]
    fn spell_emoji_in_social_units() {
        let cfg = SocialConfig {
            spell_emoji: true,
            ..Default::default()
        };
        // The vocabulary knows 😍 as written (a trained social vocabulary): it stays whole.
        let special = SpecialTokens::default();
        let mut tokens = special.all();
        tokens.push("😍".into());
        let tok = Tokenizer::new(
            NormalizerConfig::default(),
            PreTokenizerConfig::Social(cfg),
            Model::WordLevel(WordLevel::new(Vocab::new(tokens).unwrap(), "[UNK]").unwrap()),
            special,
        )
        .unwrap();
        let text = "so fun🎉😍 @Ann 👍🏽";
        assert_eq!(
            pieces(&tok, text),
            [
                "so", "fun", "party", "popper", "😍", "@ann", "thumbs", "up", ":", "medium",
                "skin", "tone"
            ]
        );
        let spans: Vec<Offsets> = tok.pre_tokenize(text).into_iter().map(|(_, o)| o).collect();
        assert_eq!(&spans[2..5], [(6, 7), (6, 7), (7, 8)]);
        assert_eq!(spans[6], (14, 16)); // "thumbs" covers 👍🏽
                                        // Off: the same text keeps every emoji whole.
        let off = social(SocialConfig::default());
        assert_eq!(pieces(&off, text), ["so", "fun", "🎉", "😍", "@ann", "👍🏽"]);
    }

    #[test]
    fn replacements_and_elongation() {
        let cfg = SocialConfig {
            replace_urls: true,
            replace_mentions: true,
            replace_numbers: true,
            shorten_elongations: true,
            ..Default::default()
        };
        let tok = social(cfg);
        assert_eq!(
            pieces(&tok, "@bob sooooo goooood http://x.io 42 times!!!!"),
            ["[USER]", "sooo", "goood", "[URL]", "[NUM]", "times", "!", "!", "!", "!"]
        );
        let url = tok.token_to_id("[URL]").unwrap();
        assert_eq!(tok.encode("http://x.io", false).unwrap(), [url]);
    }
}

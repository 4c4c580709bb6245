//! Vocabulary models: WordPiece (greedy longest match first with `##` continuations, exactly as
//! BERT and Hugging Face do it) and word level (a word is a token or it is unknown).

use rustc_hash::FxHashMap;

use crate::error::{Error, Result};

/// Tokens in id order and the reverse map.
#[derive(Debug, Clone)]
pub struct Vocab {
    tokens: Vec<String>,
    ids: FxHashMap<Box<str>, u32>,
}

impl Vocab {
    /// Build from tokens in id order; a duplicate token is an error (its id would be ambiguous).
    pub fn new(tokens: Vec<String>) -> Result<Self> {
        if tokens.len() > u32::MAX as usize / 2 {
            return Err(Error::Input(format!(
                "vocabulary has {} tokens; at most {} are supported",
                tokens.len(),
                u32::MAX / 2
            )));
        }
        let mut ids = FxHashMap::default();
        ids.reserve(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if ids.insert(t.as_str().into(), i as u32).is_some() {
                return Err(Error::Format(format!(
                    "vocabulary lists the token {t:?} twice (second time at id {i}); each token \
                     must appear once"
                )));
            }
        }
        Ok(Vocab { tokens, ids })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    #[inline]
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
}

/// WordPiece: greedy longest-match-first; a word that cannot be covered becomes one `[UNK]`.
#[derive(Debug, Clone)]
pub struct WordPiece {
    pub vocab: Vocab,
    pub unk_token: String,
    pub continuing_subword_prefix: String,
    pub max_input_chars_per_word: usize,
    unk_id: u32,
    /// Continuation tokens keyed without their prefix, so matching never builds a string.
    continuation: FxHashMap<Box<str>, u32>,
    /// Longest token in bytes (initial / continuation): longer candidates are never looked up.
    max_initial: usize,
    max_continuation: usize,
}

/// Which model a tokenizer uses.
#[derive(Debug, Clone)]
pub enum Model {
    WordPiece(WordPiece),
    WordLevel(WordLevel),
}

/// Word level: the whole word is a token, or it is `[UNK]`.
#[derive(Debug, Clone)]
pub struct WordLevel {
    pub vocab: Vocab,
    pub unk_token: String,
    unk_id: u32,
}

fn unk_id_of(vocab: &Vocab, unk_token: &str) -> Result<u32> {
    vocab.id(unk_token).ok_or_else(|| {
        Error::Format(format!(
            "the vocabulary has no unknown token {unk_token:?}; add it to the vocabulary or name \
             the one it uses (unk_token=...)"
        ))
    })
}

impl WordPiece {
    pub fn new(
        vocab: Vocab,
        unk_token: &str,
        continuing_subword_prefix: &str,
        max_input_chars_per_word: usize,
    ) -> Result<Self> {
        let unk_id = unk_id_of(&vocab, unk_token)?;
        let mut continuation = FxHashMap::default();
        let (mut max_initial, mut max_continuation) = (0, 0);
        for (i, t) in vocab.tokens().iter().enumerate() {
            max_initial = max_initial.max(t.len());
            if !continuing_subword_prefix.is_empty() {
                if let Some(rest) = t.strip_prefix(continuing_subword_prefix) {
                    continuation.insert(rest.into(), i as u32);
                    max_continuation = max_continuation.max(rest.len());
                }
            }
        }
        Ok(WordPiece {
            vocab,
            unk_token: unk_token.to_string(),
            continuing_subword_prefix: continuing_subword_prefix.to_string(),
            max_input_chars_per_word,
            unk_id,
            continuation,
            max_initial,
            max_continuation,
        })
    }

    /// Tokenise one word, appending `(id, byte_start, byte_end)` pieces (bytes within `word`).
    /// `char_len` is the word's length in characters.
    #[inline]
    pub fn tokenize(&self, word: &str, char_len: usize, out: &mut Vec<(u32, u32, u32)>) {
        if char_len > self.max_input_chars_per_word {
            out.push((self.unk_id, 0, word.len() as u32));
            return;
        }
        // The common case: the whole word is a token.
        if let Some(id) = self.vocab.id(word) {
            out.push((id, 0, word.len() as u32));
            return;
        }
        let mark = out.len();
        let bytes = word.as_bytes();
        let mut start = 0;
        while start < word.len() {
            let (map, max_len) = if start == 0 {
                (&self.vocab.ids, self.max_initial)
            } else {
                (&self.continuation, self.max_continuation)
            };
            let mut end = word.len().min(start + max_len);
            while end > start && !word.is_char_boundary(end) {
                end -= 1;
            }
            let mut found = None;
            while end > start {
                if let Some(&id) = map.get(&word[start..end]) {
                    found = Some(id);
                    break;
                }
                // Step back one character.
                end -= 1;
                while end > start && (bytes[end] & 0xC0) == 0x80 {
                    end -= 1;
                }
            }
            match found {
                Some(id) => {
                    out.push((id, start as u32, end as u32));
                    start = end;
                }
                None => {
                    out.truncate(mark);
                    out.push((self.unk_id, 0, word.len() as u32));
                    return;
                }
            }
        }
    }
}

impl WordLevel {
    pub fn new(vocab: Vocab, unk_token: &str) -> Result<Self> {
        let unk_id = unk_id_of(&vocab, unk_token)?;
        Ok(WordLevel {
            vocab,
            unk_token: unk_token.to_string(),
            unk_id,
        })
    }
}

impl Model {
    pub fn vocab(&self) -> &Vocab {
        match self {
            Model::WordPiece(m) => &m.vocab,
            Model::WordLevel(m) => &m.vocab,
        }
    }

    pub fn unk_token(&self) -> &str {
        match self {
            Model::WordPiece(m) => &m.unk_token,
            Model::WordLevel(m) => &m.unk_token,
        }
    }

    pub fn unk_id(&self) -> u32 {
        match self {
            Model::WordPiece(m) => m.unk_id,
            Model::WordLevel(m) => m.unk_id,
        }
    }

    /// The continuation prefix that decoding glues back (`None` for word level).
    pub fn continuation_prefix(&self) -> Option<&str> {
        match self {
            Model::WordPiece(m) => Some(&m.continuing_subword_prefix),
            Model::WordLevel(_) => None,
        }
    }

    #[inline]
    pub fn tokenize(&self, word: &str, char_len: usize, out: &mut Vec<(u32, u32, u32)>) {
        match self {
            Model::WordPiece(m) => m.tokenize(word, char_len, out),
            Model::WordLevel(m) => {
                let id = m.vocab.id(word).unwrap_or(m.unk_id);
                out.push((id, 0, word.len() as u32));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wordpiece(tokens: &[&str]) -> WordPiece {
        let vocab = Vocab::new(tokens.iter().map(|s| s.to_string()).collect()).unwrap();
        WordPiece::new(vocab, "[UNK]", "##", 100).unwrap()
    }

    fn pieces(wp: &WordPiece, word: &str) -> Vec<String> {
        let mut out = Vec::new();
        wp.tokenize(word, word.chars().count(), &mut out);
        out.iter()
            .map(|&(id, _, _)| wp.vocab.token(id).unwrap().to_string())
            .collect()
    }

    #[test]
    fn greedy_longest_match_first() {
        let wp = wordpiece(&["[UNK]", "un", "##aff", "##able", "una", "##ff", "a", "##a"]);
        assert_eq!(pieces(&wp, "unaffable"), ["una", "##ff", "##able"]);
        assert_eq!(pieces(&wp, "unx"), ["[UNK]"]); // one failure makes the whole word unknown
        assert_eq!(pieces(&wp, &"a".repeat(100)).len(), 100);
        assert_eq!(pieces(&wp, &"a".repeat(101)), ["[UNK]"]);
    }

    #[test]
    fn multibyte_pieces() {
        let wp = wordpiece(&["[UNK]", "é", "##t", "##é"]);
        assert_eq!(pieces(&wp, "été"), ["é", "##t", "##é"]);
    }

    #[test]
    fn missing_unknown_token_is_an_error() {
        let vocab = Vocab::new(vec!["a".into()]).unwrap();
        let err = WordPiece::new(vocab, "[UNK]", "##", 100).unwrap_err();
        assert!(err.to_string().contains("no unknown token \"[UNK]\""));
    }

    #[test]
    fn duplicate_tokens_are_an_error() {
        let err = Vocab::new(vec!["a".into(), "a".into()]).unwrap_err();
        assert!(err.to_string().contains("twice"));
    }
}

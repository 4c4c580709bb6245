//! Pre-tokenisation: splitting normalised text into words before the vocabulary model sees them.
//!
//! `bert` is BERT's basic tokenizer: split on whitespace (dropped) and isolate every punctuation
//! character, where punctuation is all ASCII non-alphanumerics plus the Unicode P* categories (in
//! the Unicode 8 tables Hugging Face uses). Symbols, emoji included, are not punctuation, so they
//! stay glued to their neighbours, exactly as in BERT. The social pre-tokeniser lives in
//! `social.rs` and hands the stretches between its units to this splitter.

use unicode_categories::UnicodeCategories;

/// A word of the normalised text: byte range `[start, end)` and character range
/// `[char_start, char_end)` within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
    pub char_start: u32,
    pub char_end: u32,
}

/// A token id with its character span in the caller's text (`(0, 0)` for added `[CLS]`/`[SEP]`).
/// It lives beside `Span`, at the bottom of the module graph, so that `social.rs` and
/// `tokenizer.rs` can both use it without importing each other.
pub type Offsets = (u32, u32);

/// BERT's definition of punctuation.
#[inline]
pub fn is_bert_punctuation(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_punctuation()
    } else {
        c.is_punctuation()
    }
}

/// Append the words of `text` (split on whitespace and punctuation) to `words`.
/// `char_base` is the character index of `text[0]` in the normalised string it was cut from,
/// `byte_base` its byte index.
pub fn split_bert(text: &str, byte_base: u32, char_base: u32, words: &mut Vec<Span>) {
    let mut word_start: Option<(u32, u32)> = None;
    let mut ci = char_base;
    for (bi, c) in text.char_indices() {
        let bi = bi as u32 + byte_base;
        let (is_space, is_punct) = if c.is_ascii() {
            let b = c as u8;
            (
                b == b' ' || (b'\t'..=b'\r').contains(&b),
                c.is_ascii_punctuation(),
            )
        } else {
            let s = c.is_whitespace();
            (s, !s && c.is_punctuation())
        };
        if is_space || is_punct {
            if let Some((s, cs)) = word_start.take() {
                words.push(Span {
                    start: s,
                    end: bi,
                    char_start: cs,
                    char_end: ci,
                });
            }
            if is_punct {
                words.push(Span {
                    start: bi,
                    end: bi + c.len_utf8() as u32,
                    char_start: ci,
                    char_end: ci + 1,
                });
            }
        } else if word_start.is_none() {
            word_start = Some((bi, ci));
        }
        ci += 1;
    }
    if let Some((s, cs)) = word_start {
        words.push(Span {
            start: s,
            end: byte_base + text.len() as u32,
            char_start: cs,
            char_end: ci,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<&str> {
        let mut words = Vec::new();
        split_bert(text, 0, 0, &mut words);
        words
            .iter()
            .map(|w| &text[w.start as usize..w.end as usize])
            .collect()
    }

    #[test]
    fn splits_whitespace_and_punctuation() {
        assert_eq!(texts("Hello, world!"), ["Hello", ",", "world", "!"]);
        assert_eq!(texts("  a\tb\n"), ["a", "b"]);
        assert_eq!(
            texts("$100 ^_^ ~z~"),
            ["$", "100", "^", "_", "^", "~", "z", "~"]
        );
        assert_eq!(texts("x≤y love😍"), ["x≤y", "love😍"]); // symbols are not punctuation
        assert_eq!(texts("a\u{3000}b「c」"), ["a", "b", "「", "c", "」"]);
    }

    #[test]
    fn spans_count_characters() {
        let mut words = Vec::new();
        split_bert("héllo wörld", 0, 0, &mut words);
        assert_eq!((words[1].char_start, words[1].char_end), (6, 11));
        assert_eq!((words[1].start, words[1].end), (7, 13));
    }
}

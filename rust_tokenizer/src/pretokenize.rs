//! Pre-tokenisation: splitting text into pieces before the vocabulary model sees them.

/// A piece of the input text and its character span `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// BERT's definition of punctuation: every ASCII non-alphanumeric printable character, plus the
/// Unicode punctuation categories.
pub fn is_bert_punctuation(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_graphic() && !c.is_ascii_alphanumeric();
    }
    // Unicode general category P* without a table: the core ranges of punctuation blocks.
    matches!(c,
        '\u{00A1}' | '\u{00A7}' | '\u{00AB}' | '\u{00B6}' | '\u{00B7}' | '\u{00BB}' | '\u{00BF}'
        | '\u{2010}'..='\u{2027}' | '\u{2030}'..='\u{205E}' | '\u{3001}'..='\u{3003}'
        | '\u{3008}'..='\u{3011}')
}

/// Split on whitespace, then split every punctuation character off as its own piece.
pub fn whitespace_punctuation(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (index, c) in text.chars().enumerate() {
        if c.is_whitespace() || is_bert_punctuation(c) {
            if !current.is_empty() {
                pieces.push(Piece {
                    text: std::mem::take(&mut current),
                    start,
                    end: index,
                });
            }
            if !c.is_whitespace() {
                pieces.push(Piece {
                    text: c.to_string(),
                    start: index,
                    end: index + 1,
                });
            }
        } else {
            if current.is_empty() {
                start = index;
            }
            current.push(c);
        }
    }
    if !current.is_empty() {
        let end = start + current.chars().count();
        pieces.push(Piece {
            text: current,
            start,
            end,
        });
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<String> {
        whitespace_punctuation(text)
            .into_iter()
            .map(|p| p.text)
            .collect()
    }

    #[test]
    fn splits_whitespace_and_punctuation() {
        assert_eq!(texts("Hello, world!"), ["Hello", ",", "world", "!"]);
        assert_eq!(texts("  a\tb\n"), ["a", "b"]);
    }

    #[test]
    fn offsets_are_character_spans() {
        let pieces = whitespace_punctuation("héllo wörld");
        assert_eq!((pieces[1].start, pieces[1].end), (6, 11));
    }
}

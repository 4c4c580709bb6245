//! Normalisation: BERT's clean-up, Chinese-character spacing, accent stripping and lowercasing,
//! with an optional NFC/NFKC step in front, keeping for every output character the index of the
//! input character it came from (so offsets point into the caller's text).
//!
//! Parity with Hugging Face `tokenizers` depends on Unicode *table versions*, not only on the
//! algorithm: it classifies characters with the `unicode_categories` 0.1 tables (Unicode 8) and
//! decomposes with `unicode-normalization-alignments` 0.1. We use the same crates, and the same
//! order of steps as its BertNormalizer: clean -> Chinese spacing -> NFD + drop Mn -> lowercase
//! (strip before lowercase, per character: no Final_Sigma context).

use serde::{Deserialize, Serialize};
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::char::{canonical_combining_class, decompose_canonical};
use unicode_normalization_alignments::UnicodeNormalization;

/// An optional Unicode normal form applied before everything else (off in BERT parity mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnicodeForm {
    #[default]
    None,
    Nfc,
    Nfkc,
}

/// What the normaliser does. The defaults are BERT uncased.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NormalizerConfig {
    /// Drop control/format/private-use characters, NUL and U+FFFD; map whitespace to ' '.
    pub clean_text: bool,
    /// Put spaces around CJK ideographs so that each becomes its own word.
    pub handle_chinese_chars: bool,
    /// NFD, then drop non-spacing marks. `None` means "same as `lowercase`" (BERT's rule).
    pub strip_accents: Option<bool>,
    pub lowercase: bool,
    pub unicode_form: UnicodeForm,
}

impl Default for NormalizerConfig {
    fn default() -> Self {
        NormalizerConfig {
            clean_text: true,
            handle_chinese_chars: true,
            strip_accents: None,
            lowercase: true,
            unicode_form: UnicodeForm::None,
        }
    }
}

/// Normalised text plus, per output character, the index of the input character it came from.
#[derive(Debug, Default, Clone)]
pub struct Normalized {
    pub text: String,
    pub origins: Vec<u32>,
}

impl Normalized {
    pub fn clear(&mut self) {
        self.text.clear();
        self.origins.clear();
    }

    #[inline]
    fn push(&mut self, c: char, origin: u32) {
        self.text.push(c);
        self.origins.push(origin);
    }
}

/// Reusable buffers, one per thread, so normalising a post allocates nothing in steady state.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Combining marks waiting for canonical reordering.
    pending: Vec<(u8, char, u32)>,
    /// The NFC/NFKC-normalised input, when a form is asked for.
    composed: Vec<(char, u32)>,
}

/// BERT's whitespace: \t \n \r and Rust's `char::is_whitespace`.
#[inline]
pub fn is_bert_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// BERT's control characters: Cc, Cf and Co (Unicode 8 tables), except \t \n \r.
#[inline]
pub fn is_bert_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

/// The CJK ideograph blocks that BERT spaces out (the ranges Hugging Face's Rust code uses).
#[inline]
pub fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

impl NormalizerConfig {
    pub fn strips_accents(&self) -> bool {
        self.strip_accents.unwrap_or(self.lowercase)
    }

    /// Normalise `text`, appending to `out`; origins are `base + index of the input character`.
    pub fn normalize_into(
        &self,
        text: &str,
        base: u32,
        out: &mut Normalized,
        scratch: &mut Scratch,
    ) {
        let strip = self.strips_accents();
        let mut sink = Sink {
            cfg: self,
            strip,
            out,
            pending: &mut scratch.pending,
        };
        match self.unicode_form {
            UnicodeForm::None => {
                for (i, c) in text.chars().enumerate() {
                    sink.feed(c, base + i as u32);
                }
            }
            form => {
                let composed = &mut scratch.composed;
                composed.clear();
                compose_with_origins(text, form, base, composed);
                for &(c, o) in composed.iter() {
                    sink.feed(c, o);
                }
            }
        }
        sink.flush();
    }

    /// Normalise a whole string (convenience for tests and single calls).
    pub fn normalize(&self, text: &str) -> Normalized {
        let mut out = Normalized::default();
        self.normalize_into(text, 0, &mut out, &mut Scratch::default());
        out
    }
}

/// NFC or NFKC with origins. The alignment crate reports per output character how many input
/// characters it consumed beyond one (negative) or that it was inserted (+1).
fn compose_with_origins(text: &str, form: UnicodeForm, base: u32, out: &mut Vec<(char, u32)>) {
    let mut next = base; // index of the next unconsumed input character
    let mut push = |(c, change): (char, isize)| {
        if change > 0 {
            out.push((c, next.saturating_sub(1).max(base)));
        } else {
            out.push((c, next));
            next += 1 + (-change) as u32;
        }
    };
    match form {
        UnicodeForm::Nfc => text.nfc().for_each(&mut push),
        UnicodeForm::Nfkc => text.nfkc().for_each(&mut push),
        UnicodeForm::None => unreachable!("compose_with_origins is only called with a form"),
    }
}

/// The per-character pipeline after the optional composition step.
struct Sink<'a> {
    cfg: &'a NormalizerConfig,
    strip: bool,
    out: &'a mut Normalized,
    pending: &'a mut Vec<(u8, char, u32)>,
}

impl Sink<'_> {
    #[inline]
    fn feed(&mut self, c: char, o: u32) {
        if c.is_ascii() {
            // Fast path: ASCII never decomposes, is never a mark and lowercases to one char.
            let b = c as u8;
            if self.cfg.clean_text && (b < 0x20 || b == 0x7F) {
                if matches!(b, b'\t' | b'\n' | b'\r') {
                    self.starter(' ', o);
                }
                return;
            }
            self.starter(
                if self.cfg.lowercase {
                    c.to_ascii_lowercase()
                } else {
                    c
                },
                o,
            );
            return;
        }
        let mut c = c;
        if self.cfg.clean_text {
            if c == '\u{FFFD}' || is_bert_control(c) {
                return;
            }
            if is_bert_whitespace(c) {
                c = ' ';
            }
        }
        if self.cfg.handle_chinese_chars && is_chinese_char(c) {
            self.starter(' ', o);
            self.decomposed(c, o);
            self.starter(' ', o);
        } else {
            self.decomposed(c, o);
        }
    }

    /// NFD of one character (when stripping accents), with canonical reordering of marks.
    #[inline]
    fn decomposed(&mut self, c: char, o: u32) {
        if !self.strip {
            self.emit(c, o);
            return;
        }
        decompose_canonical(c, |d| {
            let ccc = canonical_combining_class(d);
            if ccc == 0 {
                self.starter(d, o);
            } else {
                self.pending.push((ccc, d, o));
            }
        });
    }

    #[inline]
    fn starter(&mut self, c: char, o: u32) {
        if !self.pending.is_empty() {
            self.flush();
        }
        self.emit(c, o);
    }

    /// Emit the waiting combining marks in canonical order (a stable sort by combining class).
    fn flush(&mut self) {
        let mut pending = std::mem::take(self.pending);
        pending.sort_by_key(|&(ccc, _, _)| ccc);
        for &(_, c, o) in &pending {
            self.emit(c, o);
        }
        pending.clear();
        *self.pending = pending;
    }

    #[inline]
    fn emit(&mut self, c: char, o: u32) {
        if c.is_ascii() {
            let c = if self.cfg.lowercase {
                c.to_ascii_lowercase()
            } else {
                c
            };
            self.out.push(c, o);
            return;
        }
        if self.strip && c.is_mark_nonspacing() {
            return;
        }
        if self.cfg.lowercase {
            for l in c.to_lowercase() {
                self.out.push(l, o);
            }
        } else {
            self.out.push(c, o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> String {
        NormalizerConfig::default().normalize(text).text
    }

    #[test]
    fn bert_uncased_cases() {
        assert_eq!(norm("Héllo WÖRLD"), "hello world");
        assert_eq!(norm("d\u{0b}e\u{85}f"), "def"); // VT and NEL are Cc: deleted, not spaces
        assert_eq!(norm("a\u{200d}b\u{fffd}\u{0}c"), "abc");
        assert_eq!(norm("a\tb\u{2028}c\u{a0}d"), "a b c d");
        assert_eq!(norm("İstanbul"), "istanbul"); // strip before lowercase
        assert_eq!(norm("ΟΔΟΣ"), "οδοσ"); // no final-sigma context
        assert_eq!(norm("中文"), " 中  文 ");
        assert_eq!(norm("e\u{301} é"), "e e");
        assert_eq!(norm("\u{e000}x"), "x"); // private use is removed
        assert_eq!(norm("\u{378}"), "\u{378}"); // unassigned is kept
    }

    #[test]
    fn origins_point_into_the_input() {
        let n = NormalizerConfig::default().normalize("Aé中");
        assert_eq!(n.text, "ae 中 ");
        assert_eq!(n.origins, [0, 1, 2, 2, 2]);
    }

    #[test]
    fn canonical_reordering_before_stripping() {
        // U+0323 (ccc 220) must come before U+0307 (ccc 230) in NFD; both are Mn and removed.
        let cfg = NormalizerConfig {
            lowercase: false,
            strip_accents: Some(true),
            ..Default::default()
        };
        assert_eq!(cfg.normalize("q\u{307}\u{323}").text, "q");
    }

    #[test]
    fn optional_nfkc() {
        let cfg = NormalizerConfig {
            unicode_form: UnicodeForm::Nfkc,
            ..Default::default()
        };
        let n = cfg.normalize("ＡＢＣ ﬁne");
        assert_eq!(n.text, "abc fine");
        assert_eq!(n.origins, [0, 1, 2, 3, 4, 4, 5, 6]);
    }
}

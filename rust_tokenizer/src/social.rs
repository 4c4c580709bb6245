//! The social-media pre-tokeniser: URLs (with or without a scheme), e-mail addresses, @mentions,
//! #hashtags, numbers with separators, emoticons and whole emoji sequences (ZWJ families, skin
//! tones, flags, keycaps) each become one word; the text between them goes through the normal
//! normaliser and BERT splitter. Options replace URLs/mentions/numbers by placeholder tokens and
//! shorten elongated words ("sooooo" -> "sooo").
//!
//! Hand-written matchers rather than a regex: each unit is recognised at a word boundary by its
//! first character, in one left-to-right pass without backtracking (no ReDoS on long inputs).
//! Units are matched on the raw text, because clean-up would otherwise delete the ZWJ and
//! variation selectors that hold an emoji sequence together. Emoji and emoticons keep their raw
//! form (":D" is not ":d"); URLs, e-mails, mentions and hashtags are normalised (lowercased)
//! but never split.

use serde::{Deserialize, Serialize};
use unicode_segmentation::UnicodeSegmentation;

use crate::emoji::Speller;
use crate::error::{Error, Result};
use crate::model::Vocab;
use crate::normalize::{Normalized, NormalizerConfig, Scratch};
use crate::pretokenize::{split_bert, Offsets, Span};

/// Options of the social pre-tokeniser.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SocialConfig {
    /// URLs and e-mail addresses become `[URL]`.
    pub replace_urls: bool,
    /// @mentions become `[USER]`.
    pub replace_mentions: bool,
    /// Numbers become `[NUM]`.
    pub replace_numbers: bool,
    /// Runs of more than three identical letters are cut to three.
    pub shorten_elongations: bool,
    /// Emoji sequences the vocabulary lacks are spelled as their CLDR names (`emoji.rs`).
    /// Left out of saved files when off, so files from before the option read the same.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spell_emoji: bool,
}

pub const URL_TOKEN: &str = "[URL]";
pub const USER_TOKEN: &str = "[USER]";
pub const NUMBER_TOKEN: &str = "[NUM]";

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

/// What a matched unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Url,
    Email,
    Mention,
    Hashtag,
    Number,
    Emoticon,
    Emoji,
}

/// Reusable buffers for the elongation filter.
#[derive(Debug, Default)]
pub struct Workspace {
    tmp: Normalized,
}

#[derive(Debug, Clone)]
pub struct SocialScanner {
    cfg: SocialConfig,
    url_id: Option<u32>,
    user_id: Option<u32>,
    number_id: Option<u32>,
}

/// Emoticons kept whole (longest match wins). Western, eastern and a few classics.
const EMOTICONS: &[&str] = &[
    ":-)",
    ":)",
    ":-(",
    ":(",
    ";-)",
    ";)",
    ":-D",
    ":D",
    ";D",
    ":-P",
    ":P",
    ":-p",
    ":p",
    ";P",
    ";p",
    ":-O",
    ":O",
    ":-o",
    ":o",
    ":-/",
    ":/",
    ":-|",
    ":|",
    ":-*",
    ":*",
    ":'(",
    ":'-(",
    ":')",
    ":-]",
    ":]",
    ":-[",
    ":[",
    ":3",
    ":>",
    ":<",
    ":-X",
    ":X",
    ":-x",
    ":x",
    ":$",
    ":@",
    "=)",
    "=(",
    "=D",
    "=P",
    "=]",
    "=[",
    "8)",
    "8-)",
    "B)",
    "B-)",
    "<3",
    "<33",
    "<333",
    "</3",
    "XD",
    "xD",
    "XDD",
    "xDD",
    "XP",
    "xP",
    "D:",
    "(:",
    "):",
    "(;",
    "^_^",
    "^^",
    "^.^",
    "^-^",
    "^__^",
    "-_-",
    "-.-",
    "o_O",
    "O_o",
    "o_o",
    "O_O",
    "O.O",
    "o.O",
    "O.o",
    ">.<",
    ">_<",
    "T_T",
    "T.T",
    ";_;",
    "u_u",
    "@_@",
    "*_*",
    "(^_^)",
    "(>_<)",
    "(T_T)",
    "(^^)",
    "¯\\_(ツ)_/¯",
    "ಠ_ಠ",
];

/// The first characters of `EMOTICONS` (a quick reject before trying the list).
const EMOTICON_STARTS: &str = ":;=8B<XxD(^-oOT>u@*¯ಠ)";

/// Top-level domains that make a scheme-less "name.tld" a URL.
const TLDS: &[&str] = &[
    "com", "org", "net", "edu", "gov", "io", "co", "ly", "me", "tv", "info", "biz", "app", "dev",
    "ai", "gl", "gg", "be", "uk", "us", "ca", "de", "fr", "es", "it", "nl", "ru", "jp", "cn", "in",
    "br", "au", "ch", "se", "no", "pl", "eu", "xyz", "online", "site", "news", "blog", "tk", "to",
    "fm", "am", "sh", "news",
];

#[inline]
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Pictographic characters that start an emoji sequence (an approximation of
/// Extended_Pictographic that covers the emoji blocks).
#[inline]
fn is_emoji_start(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF
        | 0x2600..=0x27BF
        | 0x2300..=0x23FF
        | 0x2B05..=0x2B55
        | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x2194..=0x21AA | 0x24C2 | 0x25AA..=0x25FE
        | 0x3030 | 0x303D | 0x3297 | 0x3299 | 0xA9 | 0xAE)
}

fn is_ascii_alnum_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(|c| c.is_ascii_alphanumeric())
}

impl SocialScanner {
    pub fn new(cfg: SocialConfig, vocab: &Vocab) -> Result<Self> {
        let need = |on: bool, token: &str, option: &str| -> Result<Option<u32>> {
            if !on {
                return Ok(None);
            }
            vocab.id(token).map(Some).ok_or_else(|| {
                Error::Format(format!(
                    "{option}=True needs the token {token:?} in the vocabulary; train with the \
                     option on (it adds the token) or turn the option off"
                ))
            })
        };
        Ok(SocialScanner {
            url_id: need(cfg.replace_urls, URL_TOKEN, "replace_urls")?,
            user_id: need(cfg.replace_mentions, USER_TOKEN, "replace_mentions")?,
            number_id: need(cfg.replace_numbers, NUMBER_TOKEN, "replace_numbers")?,
            cfg,
        })
    }

    /// Find the unit starting at byte `i` of `text`, if any: `(kind, end byte)`.
    /// `boundary` says whether the previous character ends a word.
    pub fn match_at(text: &str, i: usize, boundary: bool) -> Option<(Kind, usize)> {
        let c = text[i..].chars().next()?;
        if let Some(end) = emoji_at(text, i) {
            return Some((Kind::Emoji, end));
        }
        if !boundary {
            return None;
        }
        match c {
            '@' => {
                let end = word_end(text, i + 1);
                (end > i + 1).then_some((Kind::Mention, end))
            }
            '#' => {
                let end = word_end(text, i + 1);
                let tag = &text[i + 1..end];
                (tag.chars().any(char::is_alphabetic)).then_some((Kind::Hashtag, end))
            }
            _ => {
                if let Some(end) = url_at(text, i) {
                    return Some((Kind::Url, end));
                }
                if let Some(end) = email_at(text, i) {
                    return Some((Kind::Email, end));
                }
                if c.is_ascii_digit() {
                    if let Some(end) = number_at(text, i) {
                        return Some((Kind::Number, end));
                    }
                }
                emoticon_at(text, i).map(|end| (Kind::Emoticon, end))
            }
        }
    }

    /// Split one segment (no special tokens inside) into words; placeholder tokens go to
    /// `fixed` as `(index of the word they precede, id, offsets)`. `speller`: spell emoji out
    /// (the `spell_emoji` option).
    #[allow(clippy::too_many_arguments)]
    pub fn split(
        &self,
        segment: &str,
        char_base: u32,
        speller: Option<&Speller<'_>>,
        normalizer: &NormalizerConfig,
        normalized: &mut Normalized,
        scratch: &mut Scratch,
        words: &mut Vec<Span>,
        fixed: &mut Vec<(usize, u32, Offsets)>,
        ws: &mut Workspace,
    ) {
        let mut plain_start = 0usize; // byte where the current stretch of plain text began
        let mut plain_char = char_base; // its character index
        let mut ci = char_base;
        let mut boundary = true;
        let mut i = 0usize;
        while i < segment.len() {
            let c = segment[i..].chars().next().unwrap_or(' ');
            if let Some((kind, end)) = Self::match_at(segment, i, boundary) {
                self.plain(
                    &segment[plain_start..i],
                    plain_char,
                    normalizer,
                    normalized,
                    scratch,
                    words,
                    ws,
                );
                let n = segment[i..end].chars().count() as u32;
                self.unit(
                    kind,
                    &segment[i..end],
                    ci,
                    speller,
                    normalizer,
                    normalized,
                    scratch,
                    words,
                    fixed,
                    ws,
                );
                ci += n;
                i = end;
                plain_start = end;
                plain_char = ci;
                boundary = !segment[end..].chars().next().is_some_and(is_word_char);
                continue;
            }
            boundary = !is_word_char(c) && !matches!(c, '@' | '.' | '#');
            ci += 1;
            i += c.len_utf8();
        }
        self.plain(
            &segment[plain_start..],
            plain_char,
            normalizer,
            normalized,
            scratch,
            words,
            ws,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn plain(
        &self,
        text: &str,
        char_base: u32,
        normalizer: &NormalizerConfig,
        normalized: &mut Normalized,
        scratch: &mut Scratch,
        words: &mut Vec<Span>,
        ws: &mut Workspace,
    ) {
        if text.is_empty() {
            return;
        }
        let byte0 = normalized.text.len();
        let char0 = normalized.origins.len() as u32;
        if self.cfg.shorten_elongations {
            ws.tmp.clear();
            normalizer.normalize_into(text, char_base, &mut ws.tmp, scratch);
            let (mut prev, mut run) = ('\0', 0);
            for (c, &o) in ws.tmp.text.chars().zip(&ws.tmp.origins) {
                run = if c == prev { run + 1 } else { 1 };
                prev = c;
                if run <= 3 || !c.is_alphabetic() {
                    normalized.text.push(c);
                    normalized.origins.push(o);
                }
            }
        } else {
            normalizer.normalize_into(text, char_base, normalized, scratch);
        }
        split_bert(&normalized.text[byte0..], byte0 as u32, char0, words);
    }

    #[allow(clippy::too_many_arguments)]
    fn unit(
        &self,
        kind: Kind,
        text: &str,
        char_base: u32,
        speller: Option<&Speller<'_>>,
        normalizer: &NormalizerConfig,
        normalized: &mut Normalized,
        scratch: &mut Scratch,
        words: &mut Vec<Span>,
        fixed: &mut Vec<(usize, u32, Offsets)>,
        ws: &mut Workspace,
    ) {
        let n = text.chars().count() as u32;
        let placeholder = match kind {
            Kind::Url | Kind::Email => self.url_id,
            Kind::Mention => self.user_id,
            Kind::Number => self.number_id,
            _ => None,
        };
        if let Some(id) = placeholder {
            fixed.push((words.len(), id, (char_base, char_base + n)));
            return;
        }
        let byte0 = normalized.text.len();
        let char0 = normalized.origins.len();
        if kind == Kind::Emoji {
            // Emoji reach the model as written, so that is the form the vocabulary must know.
            let spelled =
                speller.and_then(|sp| Some((sp, sp.spelling(text, true, &mut ws.tmp, scratch)?)));
            if let Some((sp, name)) = spelled {
                sp.push(
                    &name,
                    char_base,
                    char_base + n,
                    normalized,
                    &mut ws.tmp,
                    scratch,
                );
                split_bert(&normalized.text[byte0..], byte0 as u32, char0 as u32, words);
                return;
            }
        }
        match kind {
            Kind::Emoji | Kind::Emoticon => {
                for (k, c) in text.chars().enumerate() {
                    normalized.text.push(c);
                    normalized.origins.push(char_base + k as u32);
                }
            }
            _ => normalizer.normalize_into(text, char_base, normalized, scratch),
        }
        let char_end = normalized.origins.len();
        if char_end > char0 {
            words.push(Span {
                start: byte0 as u32,
                end: normalized.text.len() as u32,
                char_start: char0 as u32,
                char_end: char_end as u32,
            });
        }
    }
}

/// The end (byte) of the emoji sequence starting at byte `i` of `text`, if one starts there: a
/// pictograph's grapheme cluster, or a keycap (digit/#/* + optional VS16 + U+20E3).
pub fn emoji_at(text: &str, i: usize) -> Option<usize> {
    let c = text[i..].chars().next()?;
    if is_emoji_start(c) {
        return Some(i + emoji_len(&text[i..]));
    }
    if matches!(c, '0'..='9' | '#' | '*') {
        let rest = &text[i + 1..];
        let rest = rest.strip_prefix('\u{FE0F}').unwrap_or(rest);
        if let Some(after) = rest.strip_prefix('\u{20E3}') {
            return Some(text.len() - after.len());
        }
    }
    None
}

/// End of a run of word characters starting at byte `i`.
fn word_end(text: &str, i: usize) -> usize {
    text[i..]
        .char_indices()
        .find(|&(_, c)| !is_word_char(c))
        .map_or(text.len(), |(k, _)| i + k)
}

/// Length in bytes of the emoji sequence at the start of `s` (one grapheme cluster: ZWJ
/// sequences, skin tones, flags and tag sequences are single clusters).
fn emoji_len(s: &str) -> usize {
    s.graphemes(true).next().map_or(0, str::len).max(1)
}

/// Trailing characters that end a sentence rather than a URL.
fn trim_url_end(text: &str, start: usize, mut end: usize) -> usize {
    while end > start {
        let c = text[..end].chars().next_back().unwrap_or(' ');
        if matches!(
            c,
            '.' | ',' | ';' | ':' | '!' | '?' | ')' | ']' | '}' | '\'' | '"' | '>'
        ) {
            end -= c.len_utf8();
        } else {
            break;
        }
    }
    end
}

/// End of the non-space run starting at byte `i`.
fn nonspace_end(text: &str, i: usize) -> usize {
    text[i..]
        .char_indices()
        .find(|&(_, c)| c.is_whitespace() || is_emoji_start(c))
        .map_or(text.len(), |(k, _)| i + k)
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// A URL at byte `i`: `scheme://...`, `www....`, or `host.tld[/...]` with a known TLD.
fn url_at(text: &str, i: usize) -> Option<usize> {
    let rest = &text[i..];
    for scheme in ["https://", "http://", "ftp://"] {
        if starts_with_ignore_case(rest, scheme) && rest.len() > scheme.len() {
            let end = trim_url_end(text, i, nonspace_end(text, i));
            return (end > i + scheme.len()).then_some(end);
        }
    }
    if starts_with_ignore_case(rest, "www.") {
        let end = trim_url_end(text, i, nonspace_end(text, i));
        return (end > i + 4).then_some(end);
    }
    // host.tld: labels of [A-Za-z0-9-], the last one a known TLD, then end/'/'/':'/'?'/'#'.
    let b = text.as_bytes();
    let mut j = i;
    let mut last_label = i;
    let mut dots = 0;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'-' || b[j] == b'.') {
        if b[j] == b'.' {
            if j == last_label || !is_ascii_alnum_at(b, j + 1) {
                break;
            }
            dots += 1;
            last_label = j + 1;
        }
        j += 1;
    }
    if dots == 0 || j == last_label {
        return None;
    }
    let tld = &text[last_label..j];
    if !TLDS.iter().any(|t| t.eq_ignore_ascii_case(tld)) {
        return None;
    }
    match b.get(j) {
        None => Some(j),
        Some(b'/') | Some(b'?') | Some(b'#') | Some(b':') => {
            let end = trim_url_end(text, i, nonspace_end(text, i));
            Some(end.max(j))
        }
        Some(&c) if !(c as char).is_alphanumeric() && c != b'@' && c != b'_' => Some(j),
        Some(_) => None,
    }
}

/// An e-mail address at byte `i`: `local@host.tld`.
fn email_at(text: &str, i: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut j = i;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b"._%+-".contains(&b[j])) {
        j += 1;
    }
    if j == i || b.get(j) != Some(&b'@') {
        return None;
    }
    let host = j + 1;
    let mut k = host;
    let mut last_dot = None;
    while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'-' || b[k] == b'.') {
        if b[k] == b'.' {
            if !is_ascii_alnum_at(b, k + 1) {
                break;
            }
            last_dot = Some(k);
        }
        k += 1;
    }
    let dot = last_dot?;
    let tld = &b[dot + 1..k];
    (dot > host && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)).then_some(k)
}

/// A number at byte `i`: digits with `,` `.` or `:` separators between digit groups
/// ("1,000,000", "3.14", "10:30"); not followed by a letter ("2nd" is a word).
fn number_at(text: &str, i: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut j = i;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    while j + 1 < b.len() && matches!(b[j], b',' | b'.' | b':') && b[j + 1].is_ascii_digit() {
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    if j < b.len() && (b[j].is_ascii_alphabetic() || b[j] == b'_') {
        return None;
    }
    // A following non-ASCII letter also makes it a word.
    let next = std::str::from_utf8(&b[j..])
        .ok()
        .and_then(|s| s.chars().next());
    if next.is_some_and(|c| c.is_alphabetic()) {
        return None;
    }
    Some(j)
}

/// An emoticon at byte `i`, not followed by a letter or digit.
fn emoticon_at(text: &str, i: usize) -> Option<usize> {
    let rest = &text[i..];
    let first = rest.chars().next()?;
    if !EMOTICON_STARTS.contains(first) {
        return None;
    }
    let mut best = 0;
    for e in EMOTICONS {
        if e.len() > best && rest.starts_with(e) {
            let after = rest[e.len()..].chars().next();
            if !after.is_some_and(|c| c.is_alphanumeric()) {
                best = e.len();
            }
        }
    }
    (best > 0).then_some(i + best)
}

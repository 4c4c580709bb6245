//! Loading and saving: BERT `vocab.txt`, Hugging Face `tokenizer.json` (BERT WordPiece only) and
//! our own JSON format, which carries a format name and version so old files stay readable.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{Model, Vocab, WordLevel, WordPiece};
use crate::normalize::NormalizerConfig;
use crate::tokenizer::{PreTokenizerConfig, SpecialTokens, Tokenizer};

/// The `format` field of our files.
pub const FORMAT_NAME: &str = "fbdl_fast.tokenizer";
/// The newest format version; we read every version up to it. A file is written with the
/// lowest version that holds its settings, so that older readers refuse what they would
/// tokenize differently and read the rest: 2 adds the pre-tokeniser's `spell_emoji`.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct TokenizerFile {
    format: String,
    version: u32,
    normalizer: NormalizerConfig,
    pre_tokenizer: PreTokenizerConfig,
    special_tokens: SpecialTokens,
    model: ModelFile,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ModelFile {
    Wordpiece {
        continuing_subword_prefix: String,
        max_input_chars_per_word: usize,
        /// Tokens in id order.
        vocab: Vec<String>,
    },
    Wordlevel {
        vocab: Vec<String>,
    },
}

pub fn read_file(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Read a BERT `vocab.txt`: one token per line, the line number is the id.
pub fn read_vocab_txt(path: &str) -> Result<Vec<String>> {
    let text = read_file(path)?;
    // Hugging Face trims trailing whitespace from each line; so do we.
    let tokens: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    if tokens.is_empty() {
        return Err(Error::Format(format!(
            "{path}: the vocabulary file is empty"
        )));
    }
    Ok(tokens)
}

/// Our JSON for `tok`.
pub fn to_json(tok: &Tokenizer) -> Result<String> {
    let vocab = tok.model.vocab().tokens().to_vec();
    let model = match &tok.model {
        Model::WordPiece(m) => ModelFile::Wordpiece {
            continuing_subword_prefix: m.continuing_subword_prefix.clone(),
            max_input_chars_per_word: m.max_input_chars_per_word,
            vocab,
        },
        Model::WordLevel(_) => ModelFile::Wordlevel { vocab },
    };
    let file = TokenizerFile {
        format: FORMAT_NAME.into(),
        version: if tok.pre_tokenizer.spell_emoji() {
            2
        } else {
            1
        },
        normalizer: tok.normalizer.clone(),
        pre_tokenizer: tok.pre_tokenizer.clone(),
        special_tokens: tok.special.clone(),
        model,
    };
    serde_json::to_string_pretty(&file)
        .map_err(|e| Error::Format(format!("cannot serialise the tokenizer: {e}")))
}

/// Parse our JSON or a Hugging Face `tokenizer.json`; `source` names the input in errors.
pub fn from_json(json: &str, source: &str) -> Result<Tokenizer> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| Error::Format(format!("{source}: not valid JSON ({e})")))?;
    if value.get("format").and_then(Value::as_str) == Some(FORMAT_NAME) {
        let version = value.get("version").and_then(Value::as_u64).unwrap_or(0);
        if version == 0 || version > FORMAT_VERSION as u64 {
            return Err(Error::Format(format!(
                "{source}: tokenizer format version {version} is not supported; this version \
                 of fbdl_fast reads versions 1 to {FORMAT_VERSION}"
            )));
        }
        let file: TokenizerFile = serde_json::from_value(value)
            .map_err(|e| Error::Format(format!("{source}: malformed tokenizer file ({e})")))?;
        let vocab =
            Vocab::new(file.model_vocab()).map_err(|e| Error::Format(format!("{source}: {e}")))?;
        let unk = &file.special_tokens.unk;
        let model = match &file.model {
            ModelFile::Wordpiece {
                continuing_subword_prefix,
                max_input_chars_per_word,
                ..
            } => Model::WordPiece(WordPiece::new(
                vocab,
                unk,
                continuing_subword_prefix,
                *max_input_chars_per_word,
            )?),
            ModelFile::Wordlevel { .. } => Model::WordLevel(WordLevel::new(vocab, unk)?),
        };
        return Tokenizer::new(
            file.normalizer,
            file.pre_tokenizer,
            model,
            file.special_tokens,
        );
    }
    if value.get("model").is_some() {
        return from_hf_json(&value, source);
    }
    Err(Error::Format(format!(
        "{source}: not a tokenizer file: expected our format (\"format\": \"{FORMAT_NAME}\") or a \
         Hugging Face tokenizer.json (with a \"model\" key)"
    )))
}

impl TokenizerFile {
    fn model_vocab(&self) -> Vec<String> {
        match &self.model {
            ModelFile::Wordpiece { vocab, .. } | ModelFile::Wordlevel { vocab } => vocab.clone(),
        }
    }
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A Hugging Face `tokenizer.json` of a BERT WordPiece tokenizer.
fn from_hf_json(value: &Value, source: &str) -> Result<Tokenizer> {
    let bad = |what: String| {
        Error::Format(format!(
            "{source}: {what}; only BERT WordPiece tokenizer.json files (BertNormalizer, \
             BertPreTokenizer, WordPiece) are supported"
        ))
    };
    let model = &value["model"];
    if type_of(model) != "WordPiece" {
        return Err(bad(format!("the model type is {:?}", type_of(model))));
    }
    let map = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object of token -> id".into()))?;
    let mut tokens = vec![None; map.len()];
    for (token, id) in map {
        let id = id.as_u64().map(|i| i as usize).filter(|&i| i < map.len());
        match id {
            Some(i) if tokens[i].is_none() => tokens[i] = Some(token.clone()),
            _ => {
                return Err(bad(format!(
                    "model.vocab ids must be 0..{} with each id once; {token:?} breaks this",
                    map.len()
                )))
            }
        }
    }
    let tokens: Vec<String> = tokens.into_iter().map(Option::unwrap_or_default).collect();
    let unk = model["unk_token"].as_str().unwrap_or("[UNK]").to_string();
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("##");
    let max_chars = model["max_input_chars_per_word"].as_u64().unwrap_or(100) as usize;

    let normalizer = match &value["normalizer"] {
        Value::Null => NormalizerConfig {
            clean_text: false,
            handle_chinese_chars: false,
            strip_accents: Some(false),
            lowercase: false,
            ..Default::default()
        },
        n if type_of(n) == "BertNormalizer" => NormalizerConfig {
            clean_text: n["clean_text"].as_bool().unwrap_or(true),
            handle_chinese_chars: n["handle_chinese_chars"].as_bool().unwrap_or(true),
            strip_accents: n["strip_accents"].as_bool(),
            lowercase: n["lowercase"].as_bool().unwrap_or(true),
            ..Default::default()
        },
        n => return Err(bad(format!("the normalizer type is {:?}", type_of(n)))),
    };
    match type_of(&value["pre_tokenizer"]) {
        "BertPreTokenizer" => {}
        other => return Err(bad(format!("the pre_tokenizer type is {other:?}"))),
    }

    // Roles: [CLS]/[SEP] from the post-processor, [PAD] from padding, defaults otherwise.
    let mut special = SpecialTokens {
        unk: unk.clone(),
        ..Default::default()
    };
    let post = &value["post_processor"];
    match type_of(post) {
        "BertProcessing" => {
            if let Some(s) = post["cls"][0].as_str() {
                special.cls = s.into();
            }
            if let Some(s) = post["sep"][0].as_str() {
                special.sep = s.into();
            }
        }
        "TemplateProcessing" => {
            let single: Vec<&str> = post["single"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p["SpecialToken"]["id"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            if let [first, .., last] = single.as_slice() {
                special.cls = first.to_string();
                special.sep = last.to_string();
            }
        }
        _ => {}
    }
    if let Some(p) = value["padding"]["pad_token"].as_str() {
        special.pad = p.into();
    }
    if let Some(added) = value["added_tokens"].as_array() {
        let roles = special.all();
        for t in added {
            if let Some(content) = t["content"].as_str() {
                if t["special"].as_bool().unwrap_or(false) && !roles.iter().any(|r| r == content) {
                    special.extra.push(content.into());
                }
            }
        }
    }
    let vocab = Vocab::new(tokens).map_err(|e| Error::Format(format!("{source}: {e}")))?;
    let model = Model::WordPiece(
        WordPiece::new(vocab, &unk, prefix, max_chars)
            .map_err(|e| Error::Format(format!("{source}: {e}")))?,
    );
    Tokenizer::new(normalizer, PreTokenizerConfig::bert(), model, special)
}

/// A BERT tokenizer from a `vocab.txt`; `pre_tokenizer` is BERT's, with or without options.
pub fn from_bert_vocab(
    path: &str,
    normalizer: NormalizerConfig,
    pre_tokenizer: PreTokenizerConfig,
    special: SpecialTokens,
) -> Result<Tokenizer> {
    let vocab =
        Vocab::new(read_vocab_txt(path)?).map_err(|e| Error::Format(format!("{path}: {e}")))?;
    let model = WordPiece::new(vocab, &special.unk, "##", 100)
        .map_err(|e| Error::Format(format!("{path}: {e}")))?;
    Tokenizer::new(normalizer, pre_tokenizer, Model::WordPiece(model), special)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HF_JSON: &str = r###"{
      "version": "1.0", "truncation": null, "padding": null,
      "added_tokens": [{"id": 0, "content": "[PAD]", "special": true},
                       {"id": 1, "content": "[UNK]", "special": true}],
      "normalizer": {"type": "BertNormalizer", "clean_text": true,
                     "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
      "pre_tokenizer": {"type": "BertPreTokenizer"},
      "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
      "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100,
                "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hi": 4, "##s": 5}}
    }"###;

    #[test]
    fn reads_hf_tokenizer_json() {
        let tok = from_json(HF_JSON, "test").unwrap();
        assert_eq!(tok.encode("His [SEP]", true).unwrap(), [2, 4, 5, 3, 3]);
        assert_eq!(tok.pad_id(), Some(0));
    }

    #[test]
    fn our_format_round_trips() {
        let tok = from_json(HF_JSON, "test").unwrap();
        let json = to_json(&tok).unwrap();
        assert!(json.contains("\"format\": \"fbdl_fast.tokenizer\""));
        let back = from_json(&json, "saved").unwrap();
        assert_eq!(back.model.vocab().tokens(), tok.model.vocab().tokens());
        assert_eq!(back.normalizer, tok.normalizer);
        assert_eq!(
            back.encode("hi his", true).unwrap(),
            tok.encode("hi his", true).unwrap()
        );
    }

    #[test]
    fn spell_emoji_round_trips_and_old_files_load() {
        let plain = from_json(HF_JSON, "test").unwrap();
        let json = to_json(&plain).unwrap();
        // Off: written as before the option existed (version 1, no new key).
        assert!(json.contains("\"version\": 1"), "{json}");
        assert!(!json.contains("spell_emoji"), "{json}");
        let mut value: Value = serde_json::from_str(&json).unwrap();
        value["pre_tokenizer"]["spell_emoji"] = Value::Bool(true);
        let on = from_json(&value.to_string(), "on").unwrap();
        assert!(on.pre_tokenizer.spell_emoji());
        let saved = to_json(&on).unwrap();
        assert!(saved.contains("\"version\": 2"), "{saved}");
        let back = from_json(&saved, "saved").unwrap();
        assert_eq!(back.pre_tokenizer, on.pre_tokenizer);
        assert_eq!(
            back.pre_tokenize("hi🎉")[1].0,
            "party",
            "the option survives save and load"
        );
        // Files of the first format version, as it wrote them: the option off.
        value["version"] = Value::from(1);
        for old in [
            serde_json::json!({"type": "bert"}),
            serde_json::json!({"type": "social", "replace_urls": false,
                "replace_mentions": false, "replace_numbers": false,
                "shorten_elongations": false}),
        ] {
            value["pre_tokenizer"] = old;
            let tok = from_json(&value.to_string(), "old").unwrap();
            assert!(!tok.pre_tokenizer.spell_emoji());
            assert_eq!(tok.pre_tokenize("hi 🎉")[1].0, "🎉");
        }
        // The social pre-tokeniser carries the option too.
        value["pre_tokenizer"] = serde_json::json!({"type": "social", "spell_emoji": true});
        let social = from_json(&value.to_string(), "social").unwrap();
        assert!(social.pre_tokenizer.spell_emoji());
        let again = from_json(&to_json(&social).unwrap(), "again").unwrap();
        assert_eq!(again.pre_tokenizer, social.pre_tokenizer);
    }

    #[test]
    fn clear_errors() {
        let e = from_json("{", "x.json").unwrap_err().to_string();
        assert!(e.starts_with("x.json: not valid JSON"), "{e}");
        let e = from_json(
            &HF_JSON.replace("WordPiece\", \"unk", "BPE\", \"unk"),
            "b.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("the model type is \"BPE\""), "{e}");
        let e = from_json(
            r#"{"format": "fbdl_fast.tokenizer", "version": 7}"#,
            "v.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("format version 7 is not supported"), "{e}");
        let e = from_json("[]", "a.json").unwrap_err().to_string();
        assert!(e.contains("not a tokenizer file"), "{e}");
        let e = read_file("/nonexistent/vocab.txt").unwrap_err();
        assert!(matches!(e, Error::Io { .. }));
    }
}

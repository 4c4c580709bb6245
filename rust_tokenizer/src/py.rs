//! Python bindings: the only file that knows about PyO3. Thin wrappers: convert arguments, run
//! the core with the GIL released, turn core errors (and, defensively, panics) into exceptions.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use pyo3::exceptions::{
    PyFileNotFoundError, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyByteArray, PyString};

use crate::batch::{self, BatchOptions, Padding};
use crate::error::Error;
use crate::normalize::{NormalizerConfig, UnicodeForm};
use crate::social::SocialConfig;
use crate::tokenizer::{BertConfig, PreTokenizerConfig, SpecialTokens, Tokenizer};
use crate::trainer::{self, ModelKind, TrainerConfig};
use crate::{serialize, VERSION};

fn to_py(err: Error) -> PyErr {
    match err {
        Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(err.to_string())
        }
        Error::Io { .. } => PyOSError::new_err(err.to_string()),
        Error::Format(msg) | Error::Input(msg) => PyValueError::new_err(msg),
        Error::Memory(msg) => PyMemoryError::new_err(msg),
    }
}

/// Run core work without the GIL; a panic becomes a RuntimeError instead of crossing into Python.
fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> crate::error::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|panic| {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            PyRuntimeError::new_err(format!(
                "internal error in the fbdl_fast tokenizer ({msg}); please report it with the input"
            ))
        })?
        .map_err(to_py)
}

/// Extract a sequence of str without copying; a non-str item is a TypeError naming its index.
fn extract_texts(texts: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<PyBackedStr>> {
    if texts.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a list of str, not a single str; wrap it: [text]"
        )));
    }
    let mut out = Vec::with_capacity(texts.len().unwrap_or(0));
    for (i, item) in texts.try_iter()?.enumerate() {
        let item = item?;
        match item.cast::<PyString>() {
            Ok(s) => out.push(s.to_owned().try_into().map_err(|e: PyErr| {
                PyValueError::new_err(format!(
                    "{what}[{i}] is not valid Unicode text ({}); lone surrogates cannot be \
                     encoded",
                    e.value(item.py())
                ))
            })?),
            Err(_) => {
                return Err(PyTypeError::new_err(format!(
                    "{what}[{i}] is {}, expected str",
                    item.get_type().name()?
                )))
            }
        }
    }
    Ok(out)
}

fn unicode_form(name: Option<&str>) -> PyResult<UnicodeForm> {
    match name {
        None => Ok(UnicodeForm::None),
        Some("NFC") | Some("nfc") => Ok(UnicodeForm::Nfc),
        Some("NFKC") | Some("nfkc") => Ok(UnicodeForm::Nfkc),
        Some(other) => Err(PyValueError::new_err(format!(
            "unicode_normalization={other:?} is not supported; use None, \"NFC\" or \"NFKC\""
        ))),
    }
}

/// The compiled tokenizer; `fbdl_fast.Tokenizer` wraps it.
#[pyclass(module = "fbdl_fast._tokenizer", name = "Tokenizer", frozen)]
struct PyTokenizer {
    inner: Arc<Tokenizer>,
}

fn wrap(t: Tokenizer) -> PyTokenizer {
    PyTokenizer { inner: Arc::new(t) }
}

#[pymethods]
impl PyTokenizer {
    /// A BERT WordPiece tokenizer from a `vocab.txt`.
    #[staticmethod]
    #[pyo3(signature = (path, *, lowercase=true, strip_accents=None, clean_text=true, handle_chinese_chars=true, unk_token="[UNK]", spell_emoji=false))]
    #[allow(clippy::too_many_arguments)]
    fn from_bert_vocab(
        py: Python<'_>,
        path: &str,
        lowercase: bool,
        strip_accents: Option<bool>,
        clean_text: bool,
        handle_chinese_chars: bool,
        unk_token: &str,
        spell_emoji: bool,
    ) -> PyResult<Self> {
        let normalizer = NormalizerConfig {
            clean_text,
            handle_chinese_chars,
            strip_accents,
            lowercase,
            unicode_form: UnicodeForm::None,
        };
        let special = SpecialTokens {
            unk: unk_token.to_string(),
            ..Default::default()
        };
        let pre_tokenizer = PreTokenizerConfig::Bert(BertConfig { spell_emoji });
        detached(py, || {
            serialize::from_bert_vocab(path, normalizer, pre_tokenizer, special)
        })
        .map(wrap)
    }

    /// Our JSON format or a Hugging Face BERT `tokenizer.json`; `source` names it in errors.
    #[staticmethod]
    #[pyo3(signature = (json, source="<string>"))]
    fn from_str(py: Python<'_>, json: &str, source: &str) -> PyResult<Self> {
        detached(py, || serialize::from_json(json, source)).map(wrap)
    }

    #[staticmethod]
    fn from_file(py: Python<'_>, path: &str) -> PyResult<Self> {
        detached(py, || {
            serialize::from_json(&serialize::read_file(path)?, path)
        })
        .map(wrap)
    }

    /// Learn a vocabulary from `texts` (a sequence of str) or, with `files=True`, from the lines
    /// of the files named in `texts`.
    #[staticmethod]
    #[pyo3(signature = (texts, *, vocab_size, min_frequency, special_tokens, model="wordpiece", files=false, lowercase=true, strip_accents=None, clean_text=true, handle_chinese_chars=true, unicode_normalization=None, pre_tokenizer="bert", replace_urls=false, replace_mentions=false, replace_numbers=false, shorten_elongations=false, spell_emoji=false))]
    #[allow(clippy::too_many_arguments)]
    fn train(
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        vocab_size: usize,
        min_frequency: u64,
        special_tokens: Vec<String>,
        model: &str,
        files: bool,
        lowercase: bool,
        strip_accents: Option<bool>,
        clean_text: bool,
        handle_chinese_chars: bool,
        unicode_normalization: Option<&str>,
        pre_tokenizer: &str,
        replace_urls: bool,
        replace_mentions: bool,
        replace_numbers: bool,
        shorten_elongations: bool,
        spell_emoji: bool,
    ) -> PyResult<Self> {
        let model = match model {
            "wordpiece" => ModelKind::WordPiece,
            "wordlevel" => ModelKind::WordLevel,
            other => {
                return Err(PyValueError::new_err(format!(
                    "model={other:?} is not supported; use \"wordpiece\" or \"wordlevel\""
                )))
            }
        };
        let normalizer = NormalizerConfig {
            clean_text,
            handle_chinese_chars,
            strip_accents,
            lowercase,
            unicode_form: unicode_form(unicode_normalization)?,
        };
        let social = SocialConfig {
            replace_urls,
            replace_mentions,
            replace_numbers,
            shorten_elongations,
            spell_emoji,
        };
        let pre_tokenizer = match pre_tokenizer {
            "bert" => PreTokenizerConfig::Bert(BertConfig { spell_emoji }),
            "social" => PreTokenizerConfig::Social(social.clone()),
            other => {
                return Err(PyValueError::new_err(format!(
                    "pre_tokenizer={other:?} is not supported; use \"bert\" or \"social\""
                )))
            }
        };
        let mut special = SpecialTokens::default();
        for t in special_tokens {
            if !special.all().contains(&t) {
                special.extra.push(t);
            }
        }
        for t in social.placeholders() {
            if !special.all().iter().any(|s| s == t) {
                special.extra.push(t.to_string());
            }
        }
        let cfg = TrainerConfig {
            model,
            vocab_size,
            min_frequency,
            ..Default::default()
        };
        let texts = extract_texts(texts, if files { "files" } else { "texts" })?;
        detached(py, move || {
            if files {
                let mut lines = Vec::new();
                for path in &texts {
                    let text = serialize::read_file(path)?;
                    lines.extend(text.lines().map(str::to_string));
                }
                trainer::train(normalizer, pre_tokenizer, special, &lines, &cfg)
            } else {
                trainer::train(normalizer, pre_tokenizer, special, &texts, &cfg)
            }
        })
        .map(wrap)
    }

    /// Our JSON format.
    fn to_str(&self, py: Python<'_>) -> PyResult<String> {
        let inner = &self.inner;
        detached(py, || serialize::to_json(inner))
    }

    #[pyo3(signature = (text, add_special_tokens=true))]
    fn encode(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let inner = &self.inner;
        detached(py, || inner.encode(text, add_special_tokens))
    }

    /// Encode a batch into flat native-endian int64 buffers:
    /// `(rows, cols, input_ids, attention_mask, lengths, offsets or None)`.
    #[pyo3(signature = (texts, max_length=None, padding="longest", truncation=true, add_special_tokens=true, return_offsets=false))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        max_length: Option<usize>,
        padding: &str,
        truncation: bool,
        add_special_tokens: bool,
        return_offsets: bool,
    ) -> PyResult<(
        usize,
        usize,
        Bound<'py, PyByteArray>,
        Bound<'py, PyByteArray>,
        Bound<'py, PyByteArray>,
        Option<Bound<'py, PyByteArray>>,
    )> {
        let padding = match padding {
            "longest" => Padding::Longest,
            "max_length" => Padding::MaxLength,
            "none" => Padding::None,
            other => {
                return Err(PyValueError::new_err(format!(
                    "padding={other:?} is not supported; use \"longest\", \"max_length\" or False"
                )))
            }
        };
        let opts = BatchOptions {
            max_length,
            padding,
            truncation,
            add_special_tokens,
            offsets: return_offsets,
        };
        let texts = extract_texts(texts, "texts")?;
        let inner = &self.inner;
        let out = detached(py, || inner.encode_batch(&texts, &opts))?;
        let bytes = |py: Python<'py>, v: &[i64]| {
            PyByteArray::new_with(py, v.len() * 8, |buf| {
                for (dst, src) in buf.chunks_exact_mut(8).zip(v) {
                    dst.copy_from_slice(&src.to_ne_bytes());
                }
                Ok(())
            })
        };
        let offsets = match &out.offsets {
            Some(o) => Some(bytes(py, o)?),
            None => None,
        };
        Ok((
            out.rows,
            out.cols,
            bytes(py, &out.input_ids)?,
            bytes(py, &out.attention_mask)?,
            bytes(py, &out.lengths)?,
            offsets,
        ))
    }

    #[pyo3(signature = (ids, skip_special_tokens=true))]
    fn decode(&self, py: Python<'_>, ids: Vec<i64>, skip_special_tokens: bool) -> PyResult<String> {
        let n = self.inner.vocab_size();
        let ids: Vec<u32> = ids
            .into_iter()
            .map(|i| {
                u32::try_from(i)
                    .ok()
                    .filter(|&u| (u as usize) < n)
                    .ok_or_else(|| {
                        PyValueError::new_err(format!(
                        "token id {i} is out of range; the vocabulary has {n} tokens (ids 0..{})",
                        n.saturating_sub(1)
                    ))
                    })
            })
            .collect::<PyResult<_>>()?;
        let inner = &self.inner;
        detached(py, || inner.decode(&ids, skip_special_tokens))
    }

    /// Pre-tokenised pieces of the normalised text with `(start, end)` character spans.
    fn pre_tokenize(&self, py: Python<'_>, text: &str) -> PyResult<Vec<(String, (u32, u32))>> {
        let inner = &self.inner;
        detached(py, || Ok(inner.pre_tokenize(text)))
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id)
            .ok()
            .and_then(|i| self.inner.id_to_token(i))
            .map(str::to_string)
    }

    /// Tokens in id order.
    fn get_vocab(&self) -> Vec<String> {
        self.inner.model.vocab().tokens().to_vec()
    }

    /// Whether emoji the vocabulary lacks are spelled as their CLDR names.
    #[getter]
    fn spell_emoji(&self) -> bool {
        self.inner.pre_tokenizer.spell_emoji()
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    #[getter]
    fn pad_token_id(&self) -> Option<u32> {
        self.inner.pad_id()
    }

    #[getter]
    fn unk_token_id(&self) -> u32 {
        self.inner.unk_id()
    }

    #[getter]
    fn cls_token_id(&self) -> Option<u32> {
        self.inner.cls_id()
    }

    #[getter]
    fn sep_token_id(&self) -> Option<u32> {
        self.inner.sep_id()
    }

    /// The special tokens present in the vocabulary.
    #[getter]
    fn special_tokens(&self) -> Vec<String> {
        let t = &self.inner;
        t.special
            .all()
            .into_iter()
            .filter(|s| t.token_to_id(s).is_some())
            .collect()
    }
}

/// Set the number of threads `encode_batch` and training use (identical results for any count).
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    batch::set_num_threads(n).map_err(to_py)
}

/// The number of threads `encode_batch` and training use.
#[pyfunction]
fn num_threads() -> usize {
    batch::num_threads()
}

#[pymodule]
fn _tokenizer(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", VERSION)?;
    m.add("FORMAT_VERSION", serialize::FORMAT_VERSION)?;
    m.add_class::<PyTokenizer>()?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    Ok(())
}

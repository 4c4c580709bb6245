//! Python bindings: the only file that knows about PyO3.

use pyo3::prelude::*;

/// Split `text` on whitespace and punctuation; returns `(piece, (start, end))` character spans.
#[pyfunction]
fn pre_tokenize(py: Python<'_>, text: &str) -> Vec<(String, (usize, usize))> {
    py.detach(|| {
        crate::pretokenize::whitespace_punctuation(text)
            .into_iter()
            .map(|p| (p.text, (p.start, p.end)))
            .collect()
    })
}

#[pymodule]
fn _tokenizer(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", crate::VERSION)?;
    m.add_function(wrap_pyfunction!(pre_tokenize, m)?)?;
    Ok(())
}

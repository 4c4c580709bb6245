//! Tokenizer for social-media posts: the pure-Rust core. The Python bindings live in `py.rs`,
//! compiled only with the `python` feature, so `cargo test` needs no Python.

pub mod batch;
pub mod error;
pub mod model;
pub mod normalize;
pub mod pretokenize;
pub mod serialize;
pub mod social;
pub mod tokenizer;
pub mod trainer;

#[cfg(feature = "python")]
mod py;

/// The crate version, reported to Python as `fbdl_fast._tokenizer.__version__`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

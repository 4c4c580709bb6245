//! Batch encoding: posts split over a rayon pool, ids written straight into one flat row-major
//! buffer per output array (the bindings hand these to NumPy without a Python object per token).

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::pretokenize::Offsets;
use crate::tokenizer::{Tokenizer, Workspace};

/// How rows are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// To the longest row of the batch.
    Longest,
    /// To `max_length`.
    MaxLength,
    /// Not at all: every row must then have the same length.
    None,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    pub max_length: Option<usize>,
    pub padding: Padding,
    pub truncation: bool,
    pub add_special_tokens: bool,
    pub offsets: bool,
}

/// Row-major `(rows, cols)` arrays; offsets are `(rows, cols, 2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutput {
    pub rows: usize,
    pub cols: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub lengths: Vec<i64>,
    pub offsets: Option<Vec<i64>>,
}

/// Posts per parallel task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 64;

/// One chunk's encodings, concatenated.
#[derive(Default)]
struct ChunkOut {
    ids: Vec<u32>,
    offsets: Vec<Offsets>,
    lens: Vec<u32>,
}

impl Tokenizer {
    /// Encode a batch; the result is the same for every thread count.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        opts: &BatchOptions,
    ) -> Result<BatchOutput> {
        let n_special = if opts.add_special_tokens {
            self.num_special_to_add()?
        } else {
            0
        };
        if opts.padding == Padding::MaxLength && opts.max_length.is_none() {
            return Err(Error::Input(
                "padding=\"max_length\" needs max_length; pass max_length=N or \
                 padding=\"longest\""
                    .into(),
            ));
        }
        if let Some(m) = opts.max_length {
            if m < n_special + 1 {
                return Err(Error::Input(format!(
                    "max_length={m} is too small: it must be at least {} (room for the {} \
                     special tokens and one token)",
                    n_special + 1,
                    n_special
                )));
            }
        }
        let limit = match (opts.truncation, opts.max_length) {
            (true, Some(m)) => m - n_special,
            _ => usize::MAX,
        };
        let encode_chunk = |ws: &mut Workspace, chunk: &[S]| {
            let mut out = ChunkOut::default();
            out.lens.reserve(chunk.len());
            for text in chunk {
                let start = out.ids.len();
                let off_start = out.offsets.len();
                if n_special > 0 {
                    out.ids.push(self.cls_id().unwrap_or_default());
                    if opts.offsets {
                        out.offsets.push((0, 0));
                    }
                }
                let body = out.ids.len();
                self.encode_into(
                    text.as_ref(),
                    ws,
                    &mut out.ids,
                    opts.offsets.then_some(&mut out.offsets),
                );
                if out.ids.len() - body > limit {
                    out.ids.truncate(body + limit);
                    if opts.offsets {
                        out.offsets
                            .truncate(off_start + (n_special > 0) as usize + limit);
                    }
                }
                if n_special > 0 {
                    out.ids.push(self.sep_id().unwrap_or_default());
                    if opts.offsets {
                        out.offsets.push((0, 0));
                    }
                }
                out.lens.push((out.ids.len() - start) as u32);
            }
            out
        };
        let chunks: Vec<ChunkOut> = run(|| {
            texts
                .par_chunks(CHUNK)
                .map_init(Workspace::default, encode_chunk)
                .collect()
        })?;

        let rows = texts.len();
        let longest = chunks
            .iter()
            .flat_map(|c| c.lens.iter())
            .copied()
            .max()
            .unwrap_or(0) as usize;
        let cols = match opts.padding {
            Padding::Longest => longest,
            Padding::MaxLength => opts.max_length.unwrap_or(0).max(longest),
            Padding::None => {
                let shortest = chunks
                    .iter()
                    .flat_map(|c| c.lens.iter())
                    .copied()
                    .min()
                    .unwrap_or(0) as usize;
                if shortest != longest {
                    return Err(Error::Input(format!(
                        "padding=False needs every text to encode to the same length, but \
                         lengths range from {shortest} to {longest}; pass padding=\"longest\" \
                         or padding=\"max_length\""
                    )));
                }
                longest
            }
        };
        let pad = self.pad_id().unwrap_or(0) as i64;
        // Sizes come from the caller (max_length): an allocation that fails is an error to
        // report, not an abort of the whole process.
        let cells = rows
            .checked_mul(cols)
            .ok_or_else(|| too_large(rows, cols))?;
        let mut input_ids = filled(pad, cells, rows, cols)?;
        let mut attention_mask = filled(0, cells, rows, cols)?;
        let mut offsets = if opts.offsets {
            let len = cells.checked_mul(2).ok_or_else(|| too_large(rows, cols))?;
            Some(filled(0, len, rows, cols)?)
        } else {
            None
        };
        let lengths: Vec<i64> = chunks
            .iter()
            .flat_map(|c| c.lens.iter().map(|&l| l as i64))
            .collect();
        if cols > 0 {
            run(|| {
                let fill = |(k, (ids_rows, mask_rows)): (usize, (&mut [i64], &mut [i64])),
                            off_rows: Option<&mut [i64]>| {
                    let chunk = &chunks[k];
                    let mut at = 0usize;
                    let mut off_rows = off_rows;
                    for (r, &len) in chunk.lens.iter().enumerate() {
                        let len = len as usize;
                        let row = &mut ids_rows[r * cols..r * cols + len];
                        for (dst, &src) in row.iter_mut().zip(&chunk.ids[at..at + len]) {
                            *dst = src as i64;
                        }
                        mask_rows[r * cols..r * cols + len].fill(1);
                        if let Some(o) = off_rows.as_deref_mut() {
                            let dst = &mut o[r * cols * 2..(r * cols + len) * 2];
                            for (d, &(s, e)) in
                                dst.chunks_exact_mut(2).zip(&chunk.offsets[at..at + len])
                            {
                                d[0] = s as i64;
                                d[1] = e as i64;
                            }
                        }
                        at += len;
                    }
                };
                let ids_mask = input_ids
                    .par_chunks_mut(CHUNK * cols)
                    .zip(attention_mask.par_chunks_mut(CHUNK * cols))
                    .enumerate();
                match offsets.as_mut() {
                    Some(off) => ids_mask
                        .zip(off.par_chunks_mut(CHUNK * cols * 2))
                        .for_each(|(a, o)| fill(a, Some(o))),
                    None => ids_mask.for_each(|a| fill(a, None)),
                }
            })?;
        }
        Ok(BatchOutput {
            rows,
            cols,
            input_ids,
            attention_mask,
            lengths,
            offsets,
        })
    }
}

/// The pool and the process it was built in: a pool inherited through `fork()` has no threads,
/// so a child process builds its own (DataLoader workers fork).
struct PoolState {
    threads: usize,
    pid: u32,
    pool: Option<Arc<rayon::ThreadPool>>,
}

static POOL: Mutex<PoolState> = Mutex::new(PoolState {
    threads: 0,
    pid: 0,
    pool: None,
});

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Set the number of threads batch work uses (1 = the calling thread only).
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::Input(
            "num_threads=0 is not accepted; pass a positive thread count".into(),
        ));
    }
    let mut state = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if state.threads != n {
        state.threads = n;
        state.pool = None;
    }
    Ok(())
}

/// The number of threads batch work uses.
pub fn num_threads() -> usize {
    let state = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if state.threads == 0 {
        default_threads()
    } else {
        state.threads
    }
}

/// Run `f` on our pool, built on first use with the configured thread count.
pub fn run<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T> {
    let pool = {
        let mut state = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if state.threads == 0 {
            state.threads = default_threads();
        }
        let pid = std::process::id();
        if state.pid != pid {
            // Never touch a pool inherited through fork(): its threads do not exist here.
            std::mem::forget(state.pool.take());
            state.pid = pid;
        }
        if state.pool.is_none() {
            state.pool = Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(state.threads)
                    .thread_name(|i| format!("fbdl-tokenizer-{i}"))
                    .build()
                    .map_err(|e| Error::Input(format!("cannot start tokenizer threads: {e}")))?,
            ));
        }
        state.pool.clone()
    };
    // Even one thread runs inside our pool: rayon's parallel iterators would otherwise use the
    // global pool, and the thread count would not be what the caller set.
    match pool {
        Some(pool) => Ok(pool.install(f)),
        None => Ok(f()),
    }
}

/// A vector of `len` copies of `value`, or Error::Memory when it cannot be allocated.
fn filled(value: i64, len: usize, rows: usize, cols: usize) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|_| too_large(rows, cols))?;
    out.resize(len, value);
    Ok(out)
}

fn too_large(rows: usize, cols: usize) -> Error {
    Error::Memory(format!(
        "the batch's arrays of {rows} rows x {cols} ids do not fit in memory; lower max_length \
         (or pad to the longest row) or encode fewer texts at once"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, Vocab, WordPiece};
    use crate::normalize::NormalizerConfig;
    use crate::tokenizer::{PreTokenizerConfig, SpecialTokens};

    fn tiny() -> Tokenizer {
        let tokens = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "!",
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

    fn opts(max_length: Option<usize>, padding: Padding) -> BatchOptions {
        BatchOptions {
            max_length,
            padding,
            truncation: true,
            add_special_tokens: true,
            offsets: true,
        }
    }

    #[test]
    fn pads_truncates_and_masks() {
        let tok = tiny();
        let out = tok
            .encode_batch(
                &["hello world !", "Hello"],
                &opts(Some(4), Padding::MaxLength),
            )
            .unwrap();
        assert_eq!((out.rows, out.cols), (2, 4));
        assert_eq!(out.input_ids, [2, 5, 6, 3, 2, 5, 3, 0]);
        assert_eq!(out.attention_mask, [1, 1, 1, 1, 1, 1, 1, 0]);
        assert_eq!(out.lengths, [4, 3]);
        let offsets = out.offsets.unwrap();
        assert_eq!(&offsets[..8], [0, 0, 0, 5, 6, 11, 0, 0]);
    }

    #[test]
    fn identical_for_any_thread_count() {
        let tok = tiny();
        let texts: Vec<String> = (0..1000)
            .map(|i| "hello world ! ".repeat(i % 9) + &"x".repeat(i % 3))
            .collect();
        set_num_threads(1).unwrap();
        let one = tok
            .encode_batch(&texts, &opts(None, Padding::Longest))
            .unwrap();
        set_num_threads(4).unwrap();
        let four = tok
            .encode_batch(&texts, &opts(None, Padding::Longest))
            .unwrap();
        assert_eq!(one, four);
    }

    #[test]
    fn rejects_impossible_requests() {
        let tok = tiny();
        let err = tok
            .encode_batch(&["hello"], &opts(Some(2), Padding::Longest))
            .unwrap_err();
        assert!(err.to_string().contains("max_length=2 is too small"));
        let err = tok
            .encode_batch(&["hello", "hello world"], &opts(None, Padding::None))
            .unwrap_err();
        assert!(err.to_string().contains("lengths range from 3 to 4"));
        assert!(set_num_threads(0).is_err());
    }
}

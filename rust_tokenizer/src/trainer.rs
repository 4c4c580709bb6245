//! Learning a vocabulary from text. Words are counted in parallel (rayon, one hash map per task,
//! merged), then the vocabulary is built single-threaded, so the result never depends on the
//! thread count.
//!
//! WordPiece is trained the way Hugging Face trains it: byte-pair-style merges over characters
//! whose non-initial symbols carry the `##` prefix, the most frequent pair first (ties: the pair
//! with the smaller ids), until the vocabulary is full or no pair occurs `min_frequency` times.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::batch::run;
use crate::error::{Error, Result};
use crate::model::{Model, Vocab, WordLevel, WordPiece};
use crate::normalize::NormalizerConfig;
use crate::tokenizer::{PreTokenizerConfig, SpecialTokens, Tokenizer, Workspace};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    WordPiece,
    WordLevel,
}

#[derive(Debug, Clone)]
pub struct TrainerConfig {
    pub model: ModelKind,
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub continuing_subword_prefix: String,
    pub max_input_chars_per_word: usize,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            model: ModelKind::WordPiece,
            vocab_size: 30_000,
            min_frequency: 2,
            continuing_subword_prefix: "##".into(),
            max_input_chars_per_word: 100,
        }
    }
}

/// Count the words of `texts` as the tokenizer built from these settings would cut them.
pub fn count_words<S: AsRef<str> + Sync>(
    normalizer: &NormalizerConfig,
    pre_tokenizer: &PreTokenizerConfig,
    special: &SpecialTokens,
    texts: &[S],
) -> Result<Vec<(String, u64)>> {
    // A throwaway tokenizer whose vocabulary is the special tokens: it splits exactly like the
    // trained one will (special tokens in the text are matched and not counted).
    let vocab = Vocab::new(special.all())?;
    let splitter = Tokenizer::new(
        normalizer.clone(),
        pre_tokenizer.clone(),
        Model::WordLevel(WordLevel::new(vocab, &special.unk)?),
        special.clone(),
    )?;
    let counts = run(|| {
        texts
            .par_chunks(256)
            .map_init(Workspace::default, |ws, chunk| {
                let mut counts: FxHashMap<String, u64> = FxHashMap::default();
                for t in chunk {
                    splitter.words(t.as_ref(), ws, |w| {
                        if let Some(c) = counts.get_mut(w) {
                            *c += 1;
                        } else {
                            counts.insert(w.to_string(), 1);
                        }
                    });
                }
                counts
            })
            .reduce(FxHashMap::default, |a, b| {
                let (mut a, b) = if a.len() < b.len() { (b, a) } else { (a, b) };
                for (w, c) in b {
                    *a.entry(w).or_insert(0) += c;
                }
                a
            })
    })?;
    let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
    counts.sort_unstable(); // hash order is arbitrary; the vocabulary must not be
    Ok(counts)
}

/// Train a tokenizer on `texts`.
pub fn train<S: AsRef<str> + Sync>(
    normalizer: NormalizerConfig,
    pre_tokenizer: PreTokenizerConfig,
    special: SpecialTokens,
    texts: &[S],
    cfg: &TrainerConfig,
) -> Result<Tokenizer> {
    if special.unk.is_empty() {
        return Err(Error::Input(
            "special_tokens must name an unknown token (unk)".into(),
        ));
    }
    let specials = special.all();
    if cfg.vocab_size < specials.len() {
        return Err(Error::Input(format!(
            "vocab_size={} is too small: the {} special tokens alone need {}",
            cfg.vocab_size,
            specials.len(),
            specials.len()
        )));
    }
    let counts = count_words(&normalizer, &pre_tokenizer, &special, texts)?;
    let model = match cfg.model {
        ModelKind::WordLevel => {
            let tokens = word_level_vocab(counts, specials, cfg);
            Model::WordLevel(WordLevel::new(Vocab::new(tokens)?, &special.unk)?)
        }
        ModelKind::WordPiece => {
            let tokens = wordpiece_vocab(counts, specials, cfg);
            Model::WordPiece(WordPiece::new(
                Vocab::new(tokens)?,
                &special.unk,
                &cfg.continuing_subword_prefix,
                cfg.max_input_chars_per_word,
            )?)
        }
    };
    Tokenizer::new(normalizer, pre_tokenizer, model, special)
}

/// The most frequent words (ties: alphabetical) after the special tokens.
fn word_level_vocab(
    mut counts: Vec<(String, u64)>,
    specials: Vec<String>,
    cfg: &TrainerConfig,
) -> Vec<String> {
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut tokens = specials;
    for (w, c) in counts {
        if tokens.len() >= cfg.vocab_size || c < cfg.min_frequency {
            break;
        }
        if !tokens.contains(&w) {
            tokens.push(w);
        }
    }
    tokens
}

/// Special tokens, then every character (initial and `##` forms), then merges.
fn wordpiece_vocab(
    counts: Vec<(String, u64)>,
    specials: Vec<String>,
    cfg: &TrainerConfig,
) -> Vec<String> {
    let prefix = cfg.continuing_subword_prefix.as_str();
    let mut tokens: Vec<String> = Vec::new();
    let mut index: FxHashMap<String, u32> = FxHashMap::default();
    fn add(t: String, tokens: &mut Vec<String>, index: &mut FxHashMap<String, u32>) -> u32 {
        if let Some(&id) = index.get(&t) {
            return id;
        }
        let id = tokens.len() as u32;
        index.insert(t.clone(), id);
        tokens.push(t);
        id
    }
    for s in specials {
        add(s, &mut tokens, &mut index);
    }
    // The alphabet, sorted, so ids do not depend on hash order.
    let words: Vec<(Vec<char>, u64)> = counts
        .into_iter()
        .map(|(w, c)| (w.chars().collect::<Vec<char>>(), c))
        .filter(|(w, _)| !w.is_empty() && w.len() <= cfg.max_input_chars_per_word)
        .collect();
    let mut initial: Vec<char> = words.iter().map(|(w, _)| w[0]).collect();
    initial.sort_unstable();
    initial.dedup();
    let mut inner: Vec<char> = words
        .iter()
        .flat_map(|(w, _)| w[1..].iter().copied())
        .collect();
    inner.sort_unstable();
    inner.dedup();
    for c in &initial {
        add(c.to_string(), &mut tokens, &mut index);
    }
    for c in &inner {
        add(format!("{prefix}{c}"), &mut tokens, &mut index);
    }
    let mut symbols: Vec<Vec<u32>> = words
        .iter()
        .map(|(w, _)| {
            w.iter()
                .enumerate()
                .map(|(i, c)| {
                    let key = if i == 0 {
                        c.to_string()
                    } else {
                        format!("{prefix}{c}")
                    };
                    index[&key]
                })
                .collect()
        })
        .collect();
    let weights: Vec<i64> = words.iter().map(|(_, c)| *c as i64).collect();

    let mut pair_counts: FxHashMap<(u32, u32), i64> = FxHashMap::default();
    let mut where_: FxHashMap<(u32, u32), FxHashSet<u32>> = FxHashMap::default();
    for (wi, w) in symbols.iter().enumerate() {
        for p in w.windows(2) {
            let pair = (p[0], p[1]);
            *pair_counts.entry(pair).or_insert(0) += weights[wi];
            where_.entry(pair).or_default().insert(wi as u32);
        }
    }
    let mut heap: BinaryHeap<(i64, Reverse<(u32, u32)>)> =
        pair_counts.iter().map(|(&p, &c)| (c, Reverse(p))).collect();
    let mut changed: FxHashSet<(u32, u32)> = FxHashSet::default();
    while tokens.len() < cfg.vocab_size {
        let Some((count, Reverse(pair))) = heap.pop() else {
            break;
        };
        let actual = pair_counts.get(&pair).copied().unwrap_or(0);
        if actual != count {
            if actual > 0 {
                heap.push((actual, Reverse(pair)));
            }
            continue;
        }
        if (count as u64) < cfg.min_frequency.max(1) {
            break;
        }
        let right = &tokens[pair.1 as usize];
        let merged = format!(
            "{}{}",
            tokens[pair.0 as usize],
            right.strip_prefix(prefix).unwrap_or(right)
        );
        let new_id = add(merged, &mut tokens, &mut index);
        let mut affected: Vec<u32> = where_
            .remove(&pair)
            .unwrap_or_default()
            .into_iter()
            .collect();
        affected.sort_unstable();
        changed.clear();
        for wi in affected {
            let w = &mut symbols[wi as usize];
            let weight = weights[wi as usize];
            for p in w.windows(2) {
                *pair_counts.entry((p[0], p[1])).or_insert(0) -= weight;
                changed.insert((p[0], p[1]));
            }
            let mut merged_word = Vec::with_capacity(w.len());
            let mut i = 0;
            while i < w.len() {
                if i + 1 < w.len() && (w[i], w[i + 1]) == pair {
                    merged_word.push(new_id);
                    i += 2;
                } else {
                    merged_word.push(w[i]);
                    i += 1;
                }
            }
            for p in merged_word.windows(2) {
                *pair_counts.entry((p[0], p[1])).or_insert(0) += weight;
                where_.entry((p[0], p[1])).or_default().insert(wi);
                changed.insert((p[0], p[1]));
            }
            *w = merged_word;
        }
        pair_counts.remove(&pair);
        for p in changed.drain() {
            match pair_counts.get(&p) {
                Some(&c) if c > 0 => heap.push((c, Reverse(p))),
                Some(_) => {
                    pair_counts.remove(&p);
                }
                None => {}
            }
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train_on(texts: &[&str], cfg: &TrainerConfig) -> Tokenizer {
        train(
            NormalizerConfig::default(),
            PreTokenizerConfig::bert(),
            SpecialTokens::default(),
            texts,
            cfg,
        )
        .unwrap()
    }

    #[test]
    fn wordpiece_learns_frequent_words() {
        let texts = ["low lower lowest", "low low newer newest", "wider wide"];
        let cfg = TrainerConfig {
            vocab_size: 60,
            min_frequency: 2,
            ..Default::default()
        };
        let tok = train_on(&texts, &cfg);
        assert_eq!(tok.token_to_id("[PAD]"), Some(0));
        assert_eq!(tok.token_to_id("[UNK]"), Some(1));
        assert!(tok.token_to_id("low").is_some());
        assert!(tok.token_to_id("##est").is_some());
        let ids = tok.encode("lowest", false).unwrap();
        let pieces: Vec<&str> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        assert_eq!(pieces, ["low", "##est"]);
    }

    #[test]
    fn word_level_keeps_words_over_min_frequency() {
        let texts = ["a b b c c c", "c"];
        let cfg = TrainerConfig {
            model: ModelKind::WordLevel,
            vocab_size: 100,
            min_frequency: 2,
            ..Default::default()
        };
        let tok = train_on(&texts, &cfg);
        let vocab = tok.model.vocab().tokens();
        assert_eq!(&vocab[5..], ["c", "b"]);
    }

    #[test]
    fn result_does_not_depend_on_thread_count() {
        let texts: Vec<String> = (0..2000)
            .map(|i| format!("post {i} about cats{} and dogs{}", i % 7, i % 13))
            .collect();
        let cfg = TrainerConfig {
            vocab_size: 200,
            ..Default::default()
        };
        crate::batch::set_num_threads(1).unwrap();
        let a = train(
            NormalizerConfig::default(),
            PreTokenizerConfig::bert(),
            SpecialTokens::default(),
            &texts,
            &cfg,
        )
        .unwrap();
        crate::batch::set_num_threads(3).unwrap();
        let b = train(
            NormalizerConfig::default(),
            PreTokenizerConfig::bert(),
            SpecialTokens::default(),
            &texts,
            &cfg,
        )
        .unwrap();
        assert_eq!(a.model.vocab().tokens(), b.model.vocab().tokens());
    }
}

//! SmolLM2-135M-Instruct in candle (`quantized_llama`), from the GGUF file as shipped (Q4_1).
//!
//! - Weights: every Q4_1 tensor is re-quantized to Q8_0 when loaded (about a second), because
//!   candle's Q4_1 kernel is scalar and its Q8_0 kernel is SIMD: ~2.3× the decode speed.
//! - Tokenizer: built from the GGUF metadata as llama.cpp reads it (byte-level BPE, digits split
//!   one by one, no prefix space, control tokens as special tokens). candle's own GGUF tokenizer
//!   adds a prefix space, which is wrong for this model.
//! - Prompt: ChatML, without the default system prompt the file's template injects (this small
//!   model answers worse with it).
//! - Decoding: temperature (absent: 0.7, 0: greedy) and top-p with a seed, a mild repetition
//!   penalty, stop at `<|im_end|>` / `<|endoftext|>`, at `max_tokens`, or at a `stop` string.

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::LoadError;

/// The model's context window.
pub(crate) const CONTEXT: usize = 8192;
/// Answer length when the request sets none.
pub(crate) const DEFAULT_MAX_TOKENS: usize = 256;
const DEFAULT_TEMPERATURE: f64 = 0.7;
const REPEAT_PENALTY: f32 = 1.1;
const REPEAT_WINDOW: usize = 64;

/// The loaded model: weights (shared by every generation) and tokenizer.
pub(crate) struct SmolLm {
    weights: ModelWeights,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    device: Device,
}

/// How one generation samples.
pub(crate) struct Sampler {
    pub(crate) max_tokens: usize,
    pub(crate) temperature: Option<f64>,
    pub(crate) top_p: Option<f64>,
    pub(crate) seed: u64,
    pub(crate) stop: Vec<String>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
    /// The receiver went away.
    Abandoned,
}

impl SmolLm {
    /// Loads the GGUF file, re-quantizing Q4_1 tensors to Q8_0 when `requantize`.
    pub(crate) fn load(path: &Path, requantize: bool) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Missing {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let invalid =
            |e: candle_core::Error| LoadError::Invalid(format!("{}: {e}", path.display()));
        let device = Device::Cpu;
        let mut reader = Cursor::new(&bytes);
        let content = gguf_file::Content::read(&mut reader).map_err(invalid)?;
        let tokenizer = tokenizer_from_gguf(&content)?;
        let eos = content
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
            .ok_or_else(|| LoadError::Invalid("no tokenizer.ggml.eos_token_id".into()))?;
        let mut stop_ids = vec![eos];
        stop_ids.extend(tokenizer.token_to_id("<|endoftext|>"));
        // Re-quantize Q4_1 to Q8_0 in memory, then load the rewritten file.
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let mut tensors = Vec::with_capacity(names.len());
        for name in &names {
            let t = content
                .tensor(&mut reader, name, &device)
                .map_err(invalid)?;
            let t = if requantize && t.dtype() == GgmlDType::Q4_1 {
                QTensor::quantize(&t.dequantize(&device).map_err(invalid)?, GgmlDType::Q8_0)
                    .map_err(invalid)?
            } else {
                t
            };
            tensors.push((name.as_str(), t));
        }
        let metadata: Vec<(&str, &gguf_file::Value)> = content
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        let mut rewritten = Cursor::new(Vec::with_capacity(bytes.len() * 3 / 2));
        gguf_file::write(&mut rewritten, &metadata, &tensor_refs).map_err(invalid)?;
        drop(tensors);
        drop(bytes);
        rewritten.set_position(0);
        let content = gguf_file::Content::read(&mut rewritten).map_err(invalid)?;
        let weights = ModelWeights::from_gguf(content, &mut rewritten, &device).map_err(invalid)?;
        Ok(SmolLm {
            weights,
            tokenizer,
            stop_ids,
            device,
        })
    }

    /// The prompt's tokens for `messages` (role, text).
    pub(crate) fn prompt(&self, messages: &[(String, String)]) -> Result<Vec<u32>, String> {
        let mut text = String::new();
        for (role, content) in messages {
            text.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        text.push_str("<|im_start|>assistant\n");
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("tokenize: {e}"))
    }

    /// Generates after `prompt`, handing each new piece of text to `emit` (false: stop).
    /// Returns why it ended and how many tokens it generated.
    pub(crate) fn generate(
        &self,
        prompt: &[u32],
        sampler: &Sampler,
        mut emit: impl FnMut(&str) -> bool,
    ) -> Result<(Finish, usize), String> {
        let fail = |e: candle_core::Error| format!("generate: {e}");
        // A fresh KV cache per generation; the weights are shared (Arc) by the clone.
        let mut model = self.weights.clone();
        let sampling = match sampler.temperature.unwrap_or(DEFAULT_TEMPERATURE) {
            t if t <= 0.0 => Sampling::ArgMax,
            temperature => match sampler.top_p {
                Some(p) if p > 0.0 && p < 1.0 => Sampling::TopP { p, temperature },
                _ => Sampling::All { temperature },
            },
        };
        let mut logits_processor = LogitsProcessor::from_sampling(sampler.seed, sampling);
        let mut context: Vec<u32> = prompt.to_vec();
        let mut generated: Vec<u32> = Vec::new();
        let mut sent = 0usize;
        let input = Tensor::new(prompt, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(fail)?;
        let mut logits = model
            .forward(&input, 0)
            .and_then(|l| l.squeeze(0))
            .map_err(fail)?;
        loop {
            if generated.len() >= sampler.max_tokens {
                return Ok((Finish::Length, generated.len()));
            }
            let start = context.len().saturating_sub(REPEAT_WINDOW);
            let penalized = candle_transformers::utils::apply_repeat_penalty(
                &logits,
                REPEAT_PENALTY,
                &context[start..],
            )
            .map_err(fail)?;
            let next = logits_processor.sample(&penalized).map_err(fail)?;
            if self.stop_ids.contains(&next) {
                return Ok((Finish::Stop, generated.len()));
            }
            generated.push(next);
            context.push(next);
            // Decode everything so far and send what is new, holding back a piece that ends
            // inside a UTF-8 sequence (decoded as U+FFFD) until its last byte arrives.
            let text = self
                .tokenizer
                .decode(&generated, true)
                .map_err(|e| format!("decode: {e}"))?;
            if !text.ends_with('\u{FFFD}') && text.len() > sent {
                if let Some(cut) = sampler
                    .stop
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    if cut > sent && !emit(&text[sent..cut]) {
                        return Ok((Finish::Abandoned, generated.len()));
                    }
                    return Ok((Finish::Stop, generated.len()));
                }
                // Keep back a tail that could be the start of a stop string.
                let hold = sampler
                    .stop
                    .iter()
                    .map(|s| longest_prefix_suffix(&text[sent..], s))
                    .max()
                    .unwrap_or(0);
                let until = text.len() - hold;
                if until > sent && text.is_char_boundary(until) {
                    if !emit(&text[sent..until]) {
                        return Ok((Finish::Abandoned, generated.len()));
                    }
                    sent = until;
                }
            }
            let input = Tensor::new(&[next], &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(fail)?;
            logits = model
                .forward(&input, context.len() - 1)
                .and_then(|l| l.squeeze(0))
                .map_err(fail)?;
        }
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

/// An HF `tokenizer.json` built from the GGUF's tokenizer metadata, parsed by `tokenizers`.
fn tokenizer_from_gguf(content: &gguf_file::Content) -> Result<Tokenizer, LoadError> {
    let get = |key: &str| {
        content
            .metadata
            .get(key)
            .ok_or_else(|| LoadError::Invalid(format!("no {key} in the GGUF metadata")))
    };
    let list = |key: &str| -> Result<&Vec<gguf_file::Value>, LoadError> {
        get(key)?
            .to_vec()
            .map_err(|e| LoadError::Invalid(format!("{key}: {e}")))
    };
    let tokens = list("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| LoadError::Invalid(format!("tokens: {e}")))?;
    let merges = list("tokenizer.ggml.merges")?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| LoadError::Invalid(format!("merges: {e}")))?;
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| LoadError::Invalid(format!("token_type: {e}")))?
            .iter()
            .map(|t| t.to_i32().unwrap_or(1))
            .collect(),
        None => Vec::new(),
    };
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    // Token type 3 is a control token: matched whole in text, never split.
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.get(*i) == Some(&3))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| LoadError::Invalid(format!("tokenizer from GGUF: {e}")))
}

#[cfg(test)]
mod tests {
    use super::longest_prefix_suffix;

    #[test]
    fn held_back_tail_is_the_longest_start_of_a_stop_string() {
        assert_eq!(longest_prefix_suffix("hello wor", "world"), 3);
        assert_eq!(longest_prefix_suffix("hello", "world"), 0);
        assert_eq!(longest_prefix_suffix("ab", "abc"), 2);
        assert_eq!(
            longest_prefix_suffix("abc", "abc"),
            0,
            "a whole match is found, not held"
        );
    }
}

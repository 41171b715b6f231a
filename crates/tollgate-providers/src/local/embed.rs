//! all-MiniLM-L6-v2 in candle: BERT, mean pooling over the attention mask, L2 normalization (as
//! sentence-transformers computes it). Inputs are padded to the longest of the batch, not the
//! 128 tokens the shipped tokenizer.json asks for (ten times less work on short texts), and cut at
//! 256 tokens (`max_seq_length` of the model's sentence-transformers config).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::LoadError;

/// Tokens kept per input.
const MAX_TOKENS: usize = 256;

/// The loaded model.
pub(crate) struct MiniLm {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl MiniLm {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub(crate) fn load(dir: &Path) -> Result<Self, LoadError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| LoadError::Missing {
                path: dir.join(name),
                reason: e.to_string(),
            })
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| LoadError::Invalid(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| LoadError::Invalid(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| LoadError::Invalid(format!("tokenizer truncation: {e}")))?;
        let device = Device::Cpu;
        let vb =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, &device)
                .map_err(|e| LoadError::Invalid(format!("model.safetensors: {e}")))?;
        let model =
            BertModel::load(vb, &config).map_err(|e| LoadError::Invalid(format!("BERT: {e}")))?;
        Ok(MiniLm {
            model,
            tokenizer,
            device,
        })
    }

    /// One unit vector per text, in order, each with its own token count.
    pub(crate) fn embed_each(&self, texts: &[String]) -> Result<Vec<(Vec<f32>, u64)>, String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| format!("tokenize: {e}"))?;
        let tokens: Vec<u64> = encodings
            .iter()
            .map(|e| {
                e.get_attention_mask()
                    .iter()
                    .map(|&m| u64::from(m))
                    .sum::<u64>()
            })
            .collect();
        let stack = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> candle_core::Result<Tensor> {
            let rows = encodings
                .iter()
                .map(|e| Tensor::new(f(e), &self.device))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&rows, 0)
        };
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = stack(&|e| e.get_ids())?;
            let type_ids = stack(&|e| e.get_type_ids())?;
            let mask = stack(&|e| e.get_attention_mask())?;
            let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
            // Mean over real tokens only: padding must not move the vector.
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?;
            let mean = summed.broadcast_div(&counts)?;
            let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
            mean.broadcast_div(&norms)?.to_vec2::<f32>()
        };
        let vectors = run().map_err(|e| format!("forward: {e}"))?;
        Ok(vectors.into_iter().zip(tokens).collect())
    }
}

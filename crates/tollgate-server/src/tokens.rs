//! Token counting with OpenAI's `o200k_base` encoding (the GPT-4o family's), to estimate what a
//! request will cost before the upstream reports usage and to cut session history to a token
//! budget. For other model families it is an estimate of the right order.
//!
//! Counts are exactly tiktoken's (a test compares them), from a compact table: the ranks of the
//! 200k tokens keyed by a 64-bit hash of their bytes (~4 MiB). The general-purpose tokenizer
//! crates keep 45 to 75 MiB resident for the same job, more than the whole gateway's budget.
//! What is left out: special tokens (counted as text, as `encode_ordinary` does).

use std::collections::HashMap;
use std::io::Read;
use std::sync::LazyLock;

use base64::Engine;
use tollgate_core::TokenCounter;

/// o200k's pre-tokenizer, with `\s+(?!\S)|\s+` written `\s+` (the `regex` crate has no
/// lookahead); [`pieces`] restores the lookahead's effect.
const PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);

struct Encoding {
    ranks: HashMap<u64, u32>,
    pattern: regex::Regex,
}

static O200K: LazyLock<Encoding> = LazyLock::new(|| {
    let gz = include_bytes!("../data/o200k_base.tiktoken.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("the o200k table is compiled in and valid gzip (tests load it)");
    let mut ranks = HashMap::with_capacity(200_000);
    for line in text.lines() {
        let Some((token, rank)) = line.split_once(' ') else {
            continue;
        };
        if let (Ok(bytes), Ok(rank)) = (
            base64::engine::general_purpose::STANDARD.decode(token),
            rank.parse(),
        ) {
            ranks.insert(fnv1a(&bytes), rank);
        }
    }
    let pattern = regex::Regex::new(PATTERN)
        .expect("the o200k pre-tokenizer pattern compiles (tests use it)");
    Encoding { ranks, pattern }
});

/// FNV-1a, 64 bits: with 200k keys a false match is about one chance in 10^14 per lookup.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Encoding {
    fn rank(&self, bytes: &[u8]) -> Option<u32> {
        self.ranks.get(&fnv1a(bytes)).copied()
    }

    fn count(&self, text: &str) -> usize {
        pieces(&self.pattern, text)
            .map(|p| self.count_piece(p.as_bytes()))
            .sum()
    }

    /// tiktoken's byte-pair merge: repeatedly join the adjacent pair of lowest rank.
    fn count_piece(&self, piece: &[u8]) -> usize {
        if piece.len() <= 1 || self.rank(piece).is_some() {
            return 1;
        }
        let mut parts: Vec<(usize, u32)> = (0..piece.len() - 1)
            .map(|i| (i, self.rank(&piece[i..i + 2]).unwrap_or(u32::MAX)))
            .collect();
        parts.push((piece.len() - 1, u32::MAX));
        parts.push((piece.len(), u32::MAX));
        let rank_at = |parts: &[(usize, u32)], i: usize| {
            if i + 3 < parts.len() {
                self.rank(&piece[parts[i].0..parts[i + 3].0])
                    .unwrap_or(u32::MAX)
            } else {
                u32::MAX
            }
        };
        // The first pair of lowest rank merges next; none left when every rank is MAX.
        let lowest = |parts: &[(usize, u32)]| {
            parts[..parts.len() - 1]
                .iter()
                .enumerate()
                .filter(|(_, p)| p.1 != u32::MAX)
                .min_by_key(|(_, p)| p.1)
                .map(|(i, _)| i)
        };
        while let Some(i) = lowest(&parts) {
            if i > 0 {
                parts[i - 1].1 = rank_at(&parts, i - 1);
            }
            parts[i].1 = rank_at(&parts, i);
            parts.remove(i + 1);
        }
        parts.len() - 1
    }
}

/// The pre-tokenizer's pieces. A run of white space matched by the final `\s+`, longer than one
/// character and followed by something else, gives its last character back (what `\s+(?!\S)`
/// does in the original pattern), so that character joins the next piece.
fn pieces<'a>(pattern: &'a regex::Regex, text: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let mut at = 0;
    std::iter::from_fn(move || {
        let m = pattern.find_at(text, at)?;
        let mut end = m.end();
        let piece = m.as_str();
        let plain_space_run =
            piece.chars().all(char::is_whitespace) && !piece.ends_with(['\r', '\n']);
        if plain_space_run && end < text.len() && piece.chars().count() > 1 {
            end -= piece.chars().next_back().map_or(0, char::len_utf8);
        }
        at = end;
        Some(&text[m.start()..end])
    })
}

/// Counts tokens with `o200k_base`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiTokenCounter;

impl OpenAiTokenCounter {
    /// Loads the table now (it takes a moment), so no request waits for it.
    pub fn warm_up() {
        LazyLock::force(&O200K);
    }
}

impl TokenCounter for OpenAiTokenCounter {
    fn count_text(&self, text: &str) -> u32 {
        u32::try_from(O200K.count(text)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tollgate_core::ChatMessage;

    fn reference(text: &str) -> usize {
        tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(text)
            .len()
    }

    #[test]
    fn the_table_loaded() {
        assert!(O200K.ranks.len() > 199_000, "{}", O200K.ranks.len());
    }

    #[test]
    fn counts_exactly_as_tiktoken_does() {
        let samples = [
            "",
            "hello world",
            "Hello, World! How's it going? I'd say we're fine.",
            "  leading spaces and   inner   runs, trailing  ",
            "line one\nline two\r\n\r\n   indented\n\tTabbed\t\tthings",
            "fn main() { println!(\"{}\", 42); } // comment /* x */",
            "1234567890 3.14159 1e10 -42 0x1F",
            "Ünïcödé façade naïve résumé Ωμέγα Привет мир",
            "日本語のテキストと中文文本和한국어",
            "emoji 🎉🚀👍🏽 and ZWJ 👨‍👩‍👧‍👦 sequences",
            "URLs: https://example.com/path?x=1&y=2 and emails a.b@c.io",
            "ALLCAPS MixedCase camelCaseWord snake_case_word kebab-case",
            "    \n    \n",
            " ",
            "a",
            "<|endoftext|> is text here",
        ];
        let c = OpenAiTokenCounter;
        for s in samples {
            assert_eq!(c.count_text(s) as usize, reference(s), "{s:?}");
        }
    }

    #[test]
    fn random_text_counts_match_tiktoken() {
        let alphabet: Vec<char> = "aAbBzZ 09,.!?'-_/\n\r\t  éü中日🎉ßΩ\u{a0}$%&*()[]{}<>:;\""
            .chars()
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.random_range(0..60);
            let s: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            assert_eq!(
                OpenAiTokenCounter.count_text(&s) as usize,
                reference(&s),
                "{s:?}"
            );
        }
    }

    #[test]
    fn messages_count_their_framing() {
        assert_eq!(
            OpenAiTokenCounter.count_message(&ChatMessage::text("user", "hello world")),
            4 + 1 + 2
        );
    }
}

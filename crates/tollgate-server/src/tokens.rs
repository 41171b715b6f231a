//! Token counting with OpenAI's `o200k_base` encoding (the GPT-4o family's), to estimate what a
//! request will cost before the upstream reports usage and to cut session history to a token
//! budget. For other model families it is an estimate of the right order.
//!
//! Counts are exactly tiktoken's (a test compares them), from a compact table: the ranks of the
//! 200k tokens keyed by a 64-bit hash of their bytes, packed in 2 MiB ([`Ranks`]). The
//! general-purpose tokenizer crates keep 45 to 75 MiB resident for the same job, more than the
//! whole gateway's budget.
//! What is left out: special tokens (counted as text, as `encode_ordinary` does).

use std::io::Read;
use std::sync::LazyLock;

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
    ranks: Ranks,
    pattern: regex::Regex,
}

/// Bits of a [`Ranks`] slot that hold the rank (plus one): o200k's ranks are below 2^18.
const RANK_BITS: u32 = 18;
const RANK_MASK: u64 = (1 << RANK_BITS) - 1;

/// Token ranks by the 64-bit hash of the token's bytes, open-addressed with linear probing, in
/// one `u64` a slot: the hash's top 46 bits, then the rank plus one (0 marks an empty slot). A
/// token's home slot is given by the hash's low bits, so the two parts together still tell
/// hashes apart by all 64 bits at home and by 46 at worst. Half the size of a `HashMap<u64, u32>`
/// of the same ranks, and no second hash of the key.
struct Ranks {
    slots: Box<[u64]>,
    len: usize,
}

impl Ranks {
    /// Room for `n` ranks with the table at most 80% full.
    fn with_capacity(n: usize) -> Ranks {
        Ranks {
            slots: vec![0; (n + n / 4).next_power_of_two()].into_boxed_slice(),
            len: 0,
        }
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }

    /// The slot holding `hash`, else the empty slot where it would go (one is always left).
    fn slot(&self, hash: u64) -> usize {
        let tag = hash & !RANK_MASK;
        let mut i = self.home(hash);
        while self.slots[i] != 0 && self.slots[i] & !RANK_MASK != tag {
            i = (i + 1) & (self.slots.len() - 1);
        }
        i
    }

    /// Adds `hash`'s rank, unless the hash is there already or the table is full.
    fn insert(&mut self, hash: u64, rank: u32) {
        let rank = u64::from(rank) + 1;
        assert!(rank <= RANK_MASK, "a rank above 2^{RANK_BITS} - 2: {rank}");
        if self.len + 1 >= self.slots.len() {
            return;
        }
        let i = self.slot(hash);
        if self.slots[i] == 0 {
            self.slots[i] = (hash & !RANK_MASK) | rank;
            self.len += 1;
        }
    }

    fn get(&self, hash: u64) -> Option<u32> {
        let slot = self.slots[self.slot(hash)];
        (slot != 0).then(|| (slot & RANK_MASK) as u32 - 1)
    }
}

static O200K: LazyLock<Encoding> = LazyLock::new(|| {
    // Each token's bytes in rank order, each after a byte giving its length (data/README.md).
    let gz = include_bytes!("../data/o200k_base.tokens.gz");
    let mut tokens = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tokens)
        .expect("the o200k table is compiled in and valid gzip (tests load it)");
    let mut ranks = Ranks::with_capacity(200_000);
    let (mut at, mut rank) = (0, 0);
    while let Some(&len) = tokens.get(at) {
        let Some(token) = tokens.get(at + 1..at + 1 + usize::from(len)) else {
            break;
        };
        ranks.insert(fnv1a(token), rank);
        at += 1 + usize::from(len);
        rank += 1;
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
        self.ranks.get(fnv1a(bytes))
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
        assert_eq!(O200K.ranks.len, 199_998);
        assert_eq!(O200K.ranks.slots.len(), 1 << 18);
    }

    #[test]
    fn the_rank_table_finds_what_it_holds_and_nothing_else() {
        let mut ranks = Ranks::with_capacity(100);
        // Same home slot (low bits), different tags: the probe walks past the first.
        let (a, b) = (0x1234_5678_0000_0005, 0x8765_4321_0000_0005);
        ranks.insert(a, 0);
        ranks.insert(b, 7);
        ranks.insert(a, 9);
        assert_eq!(ranks.get(a), Some(0), "the first rank of a hash stays");
        assert_eq!(ranks.get(b), Some(7));
        assert_eq!(ranks.get(0x1234_5678_0000_0006), None);
        assert_eq!(ranks.len, 2);
        // A full table refuses more rather than looping forever.
        let mut small = Ranks::with_capacity(2);
        for h in 1..10u64 {
            small.insert(h << 20 | h, h as u32);
        }
        assert_eq!(small.len, small.slots.len() - 1);
        assert_eq!(small.get(99 << 20), None);
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

//! Checks between "the nearest cached question" and "served": differences an embedding smooths
//! over but that change the answer. Two questions can be near neighbours and still ask different
//! things when they name different numbers ("Sublime Text 2" and "Sublime Text 3", "iPhone 6" and
//! "iPhone 7") or when one is negated and the other is not ("can I ..." and "can't I ...").
//! Each check is a pure function of the two texts, microseconds per pair.
//!
//! [`signature`] folds what the checks compare into one short string: two questions pass every
//! check exactly when their signatures are equal, so an index can keep the signature as a tag
//! and look for the nearest question *with the same signature* (a filter, no text stored).

/// The version of the checks and of [`question`]: a change to what they compare or how a
/// question is read must bump it (signatures and vectors of another version are never compared).
pub const VERSION: u32 = 2;

/// A question as the semantic cache reads it: surrounding whitespace and trailing sentence
/// punctuation dropped, inner runs of whitespace made one space. "What is the capital of
/// France" and "What is the capital of France?" ask the same thing, yet all-MiniLM-L6-v2 puts
/// them at 0.91 apart from each other; read alike, they are one question.
pub fn question(text: &str) -> String {
    text.trim_end_matches(|c: char| {
        c.is_whitespace() || matches!(c, '?' | '!' | '.' | '？' | '！' | '。')
    })
    .split_whitespace()
    .collect::<Vec<_>>()
    .join(" ")
}

/// Why two near questions are not the same question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    /// They name different numbers (as sets of digit runs: "2" and "3", "2016" and "2017").
    Numbers,
    /// One is negated and the other is not (not, no, never, n't, without, ...).
    Negation,
}

/// The first difference found between `a` and `b`, or `None` when neither check tells them apart.
pub fn difference(a: &str, b: &str) -> Option<Difference> {
    if numbers(a) != numbers(b) {
        return Some(Difference::Numbers);
    }
    if negated(a) != negated(b) {
        return Some(Difference::Negation);
    }
    None
}

/// What the checks compare, as one string: the numbers, then `!` when negated (`2,16!`, `-`
/// when there is neither). Equal signatures pass every check.
pub fn signature(text: &str) -> String {
    let mut out = numbers(text).join(",");
    if negated(text) {
        out.push('!');
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// The runs of digits in `text`, sorted and deduplicated ("1,000" is 1 and 000: both sides are
/// split alike, so equal numbers stay equal).
fn numbers(text: &str) -> Vec<&str> {
    let mut out: Vec<&str> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|run| !run.is_empty())
        .map(|run| {
            // "07" and "7" are the same number.
            let trimmed = run.trim_start_matches('0');
            if trimmed.is_empty() { "0" } else { trimmed }
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether `text` holds a negation (presence, not a count: double negatives are rare in
/// questions).
fn negated(text: &str) -> bool {
    const WORDS: [&str; 8] = [
        "not", "no", "never", "without", "nothing", "nobody", "none", "cannot",
    ];
    // Contractions typed without their apostrophe, as people do in search boxes.
    const BARE: [&str; 17] = [
        "isnt", "arent", "wasnt", "werent", "dont", "doesnt", "didnt", "cant", "couldnt", "wont",
        "wouldnt", "shouldnt", "hasnt", "havent", "hadnt", "mustnt", "aint",
    ];
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .filter(|w| !w.is_empty())
        .any(|w| {
            let w = w.to_lowercase();
            WORDS.contains(&w.as_str())
                || BARE.contains(&w.as_str())
                || w.ends_with("n't")
                || w.ends_with("n’t")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn different_numbers_or_negation_tell_near_questions_apart() {
        for (a, b, why) in [
            (
                "How do I install Sublime Text 2?",
                "How do I install Sublime Text 3?",
                Difference::Numbers,
            ),
            (
                "Best laptop under 500 dollars",
                "Best laptop under 1000 dollars",
                Difference::Numbers,
            ),
            ("What is 2+2?", "What is 2+3?", Difference::Numbers),
            (
                "Why is Python slow?",
                "Why isn't Python slow?",
                Difference::Negation,
            ),
            (
                "How can I lose weight with exercise?",
                "How can I lose weight without exercise?",
                Difference::Negation,
            ),
            ("Can I do it?", "I cannot do it?", Difference::Negation),
            (
                "why do cats purr",
                "why dont cats purr",
                Difference::Negation,
            ),
        ] {
            assert_eq!(difference(a, b), Some(why), "{a} / {b}");
            assert_eq!(difference(b, a), Some(why), "{b} / {a}");
            assert_ne!(signature(a), signature(b), "{a} / {b}");
        }
    }

    #[test]
    fn questions_are_read_without_trailing_punctuation_or_extra_spaces() {
        assert_eq!(
            question("  What is  the capital of France? "),
            "What is the capital of France"
        );
        assert_eq!(question("Really?!..."), "Really");
        assert_eq!(question("What is 2.5?"), "What is 2.5");
        assert_eq!(question("Is C++ fast?"), "Is C++ fast");
        assert_eq!(question("?? "), "");
    }

    #[test]
    fn rewordings_pass() {
        for (a, b) in [
            (
                "what's the capital of france",
                "What is the capital of France?",
            ),
            (
                "Top 10 movies of 2016?",
                "What are the 10 best 2016 movies?",
            ),
            ("Why don't cats like water?", "Why do cats not like water?"),
            ("Version 07 notes", "version 7 notes"),
            ("no", "No."),
        ] {
            assert_eq!(difference(a, b), None, "{a} / {b}");
            assert_eq!(signature(a), signature(b), "{a} / {b}");
        }
        assert_eq!(signature("Top 10 movies of 2016?"), "10,2016");
        assert_eq!(signature("Why isn't it 7?"), "7!");
        assert_eq!(signature("hello"), "-");
        // "knot" and "note" are not negations.
        assert_eq!(difference("tie a knot", "write a note"), None);
    }
}

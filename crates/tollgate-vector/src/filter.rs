//! Metadata and filters, stored by column so a filter is evaluated over a whole collection at
//! once: a tag condition is a union of posting bitsets, a range condition one pass over a dense
//! column of numbers. The result is the bitset of slots that pass, computed *before* ranking.

use std::collections::{BTreeMap, HashMap};

use crate::bitset::Bitset;

/// Metadata a vector carries, for filtering.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// Tag fields: exact-match filters (`lang = "en"`).
    pub tags: BTreeMap<String, String>,
    /// Numeric fields: range filters (`price in [10, 20]`).
    pub numbers: BTreeMap<String, f64>,
}

/// One condition of a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The tag equals one of the values.
    TagIn { field: String, values: Vec<String> },
    /// The number lies in `[min, max]` (either bound optional).
    Range {
        field: String,
        min: Option<f64>,
        max: Option<f64>,
    },
}

/// All conditions must hold (an empty filter passes everything).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

impl Filter {
    /// True when `meta` satisfies every condition (the row-at-a-time definition that the
    /// columnar evaluation must agree with).
    pub fn matches(&self, meta: &Metadata) -> bool {
        self.conditions.iter().all(|c| match c {
            Condition::TagIn { field, values } => {
                meta.tags.get(field).is_some_and(|v| values.contains(v))
            }
            Condition::Range { field, min, max } => meta
                .numbers
                .get(field)
                .is_some_and(|x| in_range(*x, *min, *max)),
        })
    }
}

fn in_range(x: f64, min: Option<f64>, max: Option<f64>) -> bool {
    min.is_none_or(|m| x >= m) && max.is_none_or(|m| x <= m)
}

/// Metadata of every slot, by column.
#[derive(Debug, Clone, Default)]
pub(crate) struct Columns {
    /// field → value → slots having it.
    tags: HashMap<String, HashMap<String, Bitset>>,
    /// field → value per slot (NaN where the slot has none).
    numbers: HashMap<String, Vec<f64>>,
}

impl Columns {
    pub(crate) fn insert(&mut self, slot: usize, meta: &Metadata) {
        for (field, value) in &meta.tags {
            self.tags
                .entry(field.clone())
                .or_default()
                .entry(value.clone())
                .or_default()
                .insert(slot);
        }
        for (field, value) in &meta.numbers {
            let column = self.numbers.entry(field.clone()).or_default();
            if column.len() <= slot {
                column.resize(slot + 1, f64::NAN);
            }
            column[slot] = *value;
        }
    }

    /// Forgets what `insert(slot, meta)` recorded.
    pub(crate) fn remove(&mut self, slot: usize, meta: &Metadata) {
        for (field, value) in &meta.tags {
            if let Some(values) = self.tags.get_mut(field) {
                if let Some(postings) = values.get_mut(value) {
                    postings.remove(slot);
                    if postings.len() == 0 {
                        values.remove(value);
                    }
                }
                if values.is_empty() {
                    self.tags.remove(field);
                }
            }
        }
        for field in meta.numbers.keys() {
            if let Some(x) = self.numbers.get_mut(field).and_then(|c| c.get_mut(slot)) {
                *x = f64::NAN;
            }
        }
    }

    /// The members of `candidates` that pass `filter`. Tag conditions first (word-wide ANDs),
    /// then ranges over what is left.
    pub(crate) fn evaluate(&self, filter: &Filter, candidates: &Bitset) -> Bitset {
        let mut pass = candidates.clone();
        for condition in &filter.conditions {
            if let Condition::TagIn { field, values } = condition {
                let mut any = Bitset::new();
                if let Some(by_value) = self.tags.get(field) {
                    for value in values {
                        if let Some(postings) = by_value.get(value) {
                            any.union_with(postings);
                        }
                    }
                }
                pass.intersect_with(&any);
            }
        }
        for condition in &filter.conditions {
            if let Condition::Range { field, min, max } = condition {
                match self.numbers.get(field) {
                    // NaN marks an absent value (stored numbers are finite), which never passes.
                    Some(column) => pass.retain(|slot| {
                        column
                            .get(slot)
                            .is_some_and(|x| !x.is_nan() && in_range(*x, *min, *max))
                    }),
                    None => pass = Bitset::new(),
                }
            }
        }
        pass
    }
}

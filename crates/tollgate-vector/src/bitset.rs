//! A growable set of slot numbers, one bit each: the currency of filters (a tag's postings, the
//! live slots, the slots a filter passes).

/// A set of `usize` below its capacity, 64 to a word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Bitset { words: Vec::new() }
    }

    pub(crate) fn insert(&mut self, i: usize) {
        let w = i / 64;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << (i % 64);
    }

    pub(crate) fn remove(&mut self, i: usize) {
        if let Some(word) = self.words.get_mut(i / 64) {
            *word &= !(1 << (i % 64));
        }
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    /// Keeps only what `other` holds too.
    pub(crate) fn intersect_with(&mut self, other: &Bitset) {
        for (i, word) in self.words.iter_mut().enumerate() {
            *word &= other.words.get(i).copied().unwrap_or(0);
        }
    }

    /// Adds everything `other` holds.
    pub(crate) fn union_with(&mut self, other: &Bitset) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (word, o) in self.words.iter_mut().zip(&other.words) {
            *word |= o;
        }
    }

    /// Removes the members for which `keep` is false.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        for (w, word) in self.words.iter_mut().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if !keep(w * 64 + b) {
                    *word &= !(1 << b);
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Members in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations_agree_with_a_btreeset() {
        let a: Vec<usize> = vec![0, 3, 63, 64, 65, 200, 1000];
        let b: Vec<usize> = vec![3, 64, 999, 1000, 5000];
        let (mut x, mut y) = (Bitset::new(), Bitset::new());
        a.iter().for_each(|&i| x.insert(i));
        b.iter().for_each(|&i| y.insert(i));
        let mut inter = x.clone();
        inter.intersect_with(&y);
        assert_eq!(inter.iter().collect::<Vec<_>>(), vec![3, 64, 1000]);
        let mut uni = x.clone();
        uni.union_with(&y);
        assert_eq!(uni.len(), 9);
        assert!(uni.contains(5000) && !uni.contains(4999));
        x.retain(|i| i % 2 == 0);
        assert_eq!(x.iter().collect::<Vec<_>>(), vec![0, 64, 200, 1000]);
        x.remove(64);
        x.remove(1 << 20);
        assert_eq!(x.iter().collect::<Vec<_>>(), vec![0, 200, 1000]);
    }
}

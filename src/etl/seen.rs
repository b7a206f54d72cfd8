//! What the loader remembers about loaded rows, compactly enough for the full data set (a few
//! hundred megabytes at most): dense vectors and bitsets indexed by id, with hash maps only for
//! ids far beyond the data set's range.

use std::collections::{HashMap, HashSet};

/// Ids up to this are kept in dense vectors; larger ones (never in a real export) in maps.
const DENSE_LIMIT: usize = 1 << 25;

/// A map from positive ids to small values.
pub struct IdMap<T: Copy> {
    dense: Vec<Option<T>>,
    sparse: HashMap<i32, T>,
}

impl<T: Copy> Default for IdMap<T> {
    fn default() -> Self {
        Self {
            dense: Vec::new(),
            sparse: HashMap::new(),
        }
    }
}

impl<T: Copy> IdMap<T> {
    pub fn get(&self, id: i32) -> Option<T> {
        let i = id as usize;
        if i < DENSE_LIMIT {
            self.dense.get(i).copied().flatten()
        } else {
            self.sparse.get(&id).copied()
        }
    }

    pub fn get_mut(&mut self, id: i32) -> Option<&mut T> {
        let i = id as usize;
        if i < DENSE_LIMIT {
            self.dense.get_mut(i).and_then(Option::as_mut)
        } else {
            self.sparse.get_mut(&id)
        }
    }

    /// Inserts unless the id is taken; returns whether it was inserted.
    pub fn insert_new(&mut self, id: i32, value: T) -> bool {
        let i = id as usize;
        if i < DENSE_LIMIT {
            if i >= self.dense.len() {
                self.dense.resize((i + 1).max(self.dense.len() * 2), None);
            }
            let slot = &mut self.dense[i];
            slot.is_none() && {
                *slot = Some(value);
                true
            }
        } else {
            self.sparse.try_insert_compat(id, value)
        }
    }

    /// The entry for `id`, inserted as `default` if absent.
    pub fn get_or_insert(&mut self, id: i32, default: T) -> &mut T {
        let i = id as usize;
        if i < DENSE_LIMIT {
            if i >= self.dense.len() {
                self.dense.resize((i + 1).max(self.dense.len() * 2), None);
            }
            self.dense[i].get_or_insert(default)
        } else {
            self.sparse.entry(id).or_insert(default)
        }
    }

    /// Every entry, in id order for the dense part.
    pub fn iter(&self) -> impl Iterator<Item = (i32, T)> + '_ {
        let dense = self
            .dense
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i as i32, (*v)?)));
        let mut sparse: Vec<_> = self.sparse.iter().map(|(k, v)| (*k, *v)).collect();
        sparse.sort_by_key(|(k, _)| *k);
        dense.chain(sparse)
    }
}

trait TryInsertCompat<T> {
    fn try_insert_compat(&mut self, id: i32, value: T) -> bool;
}

impl<T> TryInsertCompat<T> for HashMap<i32, T> {
    fn try_insert_compat(&mut self, id: i32, value: T) -> bool {
        match self.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(value);
                true
            }
        }
    }
}

/// A set of positive ids.
#[derive(Default)]
pub struct IdSet {
    bits: Vec<u64>,
    sparse: HashSet<i32>,
}

impl IdSet {
    /// Adds `id`; returns whether it was new.
    pub fn insert(&mut self, id: i32) -> bool {
        let i = id as usize;
        if i >= DENSE_LIMIT {
            return self.sparse.insert(id);
        }
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if word >= self.bits.len() {
            self.bits.resize((word + 1).max(self.bits.len() * 2), 0);
        }
        let new = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        new
    }

    pub fn contains(&self, id: i32) -> bool {
        let i = id as usize;
        if i >= DENSE_LIMIT {
            return self.sparse.contains(&id);
        }
        self.bits
            .get(i / 64)
            .is_some_and(|word| word & (1u64 << (i % 64)) != 0)
    }

    /// Every id, the dense ones in order.
    pub fn iter(&self) -> impl Iterator<Item = i32> + '_ {
        let dense = self.bits.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1u64 << b) != 0)
                .map(move |b| (w * 64 + b) as i32)
        });
        dense.chain(self.sparse.iter().copied())
    }
}

/// A loaded characteristic: its product, its position among the product's characteristics, and
/// the sum and count of the values listable reviews gave it.
#[derive(Clone, Copy)]
pub struct CharacteristicInfo {
    pub product: i32,
    pub name: u16,
    pub position: u8,
    pub value_sum: u64,
    pub value_count: u32,
}

/// A loaded review: its product, its stars, whether it counts (not reported), whether a photo of
/// it was loaded, and which of its product's characteristics it has rated (by position;
/// positions past 7 are tracked in `Seen::rated`).
#[derive(Clone, Copy)]
pub struct ReviewInfo {
    pub product: i32,
    pub rating: u8,
    pub listable: bool,
    pub photos: bool,
    pub rated: u8,
}

/// A product's counts over its listable reviews: ratings 1 to 5, not recommended and
/// recommended, then ratings 1 to 5 of the reviews with photos (the columns of
/// `product_stats`).
pub type ProductCounts = [u32; 12];

/// Everything the cross-row checks need, and the per-product aggregates gathered on the way.
#[derive(Default)]
pub struct Seen {
    pub reviews: IdMap<ReviewInfo>,
    /// Kept here rather than computed by a GROUP BY over the staged reviews: adding to a counter
    /// per accepted row costs nothing beside the parse, while the query scans the whole table
    /// again (about 7 s of the full-size load).
    pub product_counts: IdMap<ProductCounts>,
    pub characteristics: IdMap<CharacteristicInfo>,
    /// Interned characteristic names.
    pub names: Vec<String>,
    name_index: HashMap<String, u16>,
    /// How many characteristics each product has, and which names (by interned index < 64).
    pub product_names: IdMap<(u8, u64)>,
    /// (product, name) pairs for names past the 64th distinct one.
    pub product_rare_names: HashSet<(i32, u16)>,
    pub photos: IdSet,
    pub characteristic_reviews: IdSet,
    /// (review, characteristic) pairs for characteristics at positions past 7.
    pub rated: HashSet<(i32, i32)>,
}

impl Seen {
    /// Counts a listable review towards its product's aggregates.
    pub fn count_listable(&mut self, product: i32, rating: i16, recommend: bool) {
        let counts = self.product_counts.get_or_insert(product, [0; 12]);
        counts[(rating - 1) as usize] += 1;
        counts[5 + recommend as usize] += 1;
    }

    /// Counts the first loaded photo of a listable review towards its product's photo counts.
    pub fn count_photos(&mut self, product: i32, rating: u8) {
        let counts = self.product_counts.get_or_insert(product, [0; 12]);
        counts[6 + rating as usize] += 1;
    }

    /// The name's index, or `None` past 65,535 distinct names.
    pub fn intern(&mut self, name: &str) -> Option<u16> {
        if let Some(&i) = self.name_index.get(name) {
            return Some(i);
        }
        let i = u16::try_from(self.names.len()).ok()?;
        self.names.push(name.to_string());
        self.name_index.insert(name.to_string(), i);
        Some(i)
    }
}

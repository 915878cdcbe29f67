//! Paged KV bookkeeping: fixed 16-token blocks handed out from one pool, a block table per
//! sequence. The K/V memory itself belongs to the backend; this only decides where tokens go.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use crate::backend::KV_BLOCK;

/// The blocks of the KV pool: which are free, how many sequences hold each, and which hold a
/// registered prompt prefix (prefix reuse: a full block whose tokens and everything before
/// them equal another request's can be shared instead of recomputed).
///
/// A registered block stays findable after its last holder lets it go, until the pool hands
/// it out again: free blocks are handed out least recently released first, so a popular
/// prefix (a system prompt) survives between requests that don't overlap in time.
///
/// Taking a free registered block back (`share`) must not cost a scan of the free list (a long
/// shared prompt re-takes hundreds of blocks from a pool of tens of thousands), so the list is
/// lazy: an entry is `(block, stamp)` and counts only while the block is still free since that
/// release (`freed_at[block] == stamp`); stale entries are skipped when met and dropped in bulk
/// when they outnumber the pool.
#[derive(Debug)]
pub struct BlockPool {
    free: VecDeque<(u32, u64)>,
    /// Per block: the stamp of its latest release (its valid free-list entry, when `refs` is 0).
    freed_at: Vec<u64>,
    /// Releases so far: the next stamp.
    stamp: u64,
    n_free: usize,
    /// Per block: sequences holding it.
    refs: Vec<u32>,
    /// Registered blocks by prefix hash ([`prefix_hashes`]), and each block's hash.
    by_hash: HashMap<u64, u32>,
    hash_of: Vec<Option<u64>>,
}

impl BlockPool {
    pub fn new(n_blocks: usize) -> Self {
        BlockPool {
            free: (0..n_blocks as u32).map(|b| (b, 0)).collect(),
            freed_at: vec![0; n_blocks],
            stamp: 1,
            n_free: n_blocks,
            refs: vec![0; n_blocks],
            by_hash: HashMap::new(),
            hash_of: vec![None; n_blocks],
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks no sequence holds (registered ones included: they are reused or recycled).
    pub fn n_free(&self) -> usize {
        self.n_free
    }

    /// A block for new tokens (forgetting what it held).
    pub fn alloc(&mut self) -> Option<u32> {
        let b = loop {
            let (b, at) = self.free.pop_front()?;
            if self.refs[b as usize] == 0 && self.freed_at[b as usize] == at {
                break b;
            }
        };
        self.n_free -= 1;
        if let Some(h) = self.hash_of[b as usize].take() {
            self.by_hash.remove(&h);
        }
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Let go of blocks; a block nobody holds any more becomes free.
    pub fn release(&mut self, blocks: impl IntoIterator<Item = u32>) {
        for b in blocks {
            let r = &mut self.refs[b as usize];
            debug_assert!(*r > 0, "block {b} released more often than held");
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.freed_at[b as usize] = self.stamp;
                self.free.push_back((b, self.stamp));
                self.stamp += 1;
                self.n_free += 1;
            }
        }
    }

    /// Hold a registered block (found with [`BlockPool::lookup`]) for one more sequence.
    pub fn share(&mut self, b: u32) {
        if self.refs[b as usize] == 0 {
            // Its free-list entry goes stale (refs > 0 now; a later release stamps a new one).
            self.n_free -= 1;
            if self.free.len() > 2 * self.refs.len() {
                let (refs, freed_at) = (&self.refs, &self.freed_at);
                self.free.retain(|&(f, at)| {
                    f != b && refs[f as usize] == 0 && freed_at[f as usize] == at
                });
            }
        }
        self.refs[b as usize] += 1;
    }

    /// The block registered for prefix hash `h`, and whether holding it takes a free block.
    pub fn lookup(&self, h: u64) -> Option<(u32, bool)> {
        self.by_hash
            .get(&h)
            .map(|&b| (b, self.refs[b as usize] == 0))
    }

    /// Make a full, computed block findable by its prefix hash (the first block registered
    /// for a hash keeps it).
    pub fn register(&mut self, b: u32, h: u64) {
        if self.hash_of[b as usize].is_none() && !self.by_hash.contains_key(&h) {
            self.by_hash.insert(h, b);
            self.hash_of[b as usize] = Some(h);
        }
    }
}

/// The prefix hash of each full block of `tokens`: block `i`'s hash covers tokens
/// `0..16(i+1)`, so equal hashes mean equal prefixes (up to 64-bit collisions).
pub fn prefix_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut h = 0u64;
    tokens
        .chunks_exact(KV_BLOCK)
        .map(|block| {
            let mut s = std::collections::hash_map::DefaultHasher::new();
            (h, block).hash(&mut s);
            h = s.finish();
            h
        })
        .collect()
}

/// One sequence's cache state.
#[derive(Debug, Default, Clone)]
pub struct SeqCache {
    pub blocks: Vec<u32>,
    /// Tokens stored.
    pub len: usize,
}

impl SeqCache {
    /// Slot of position `pos` (which must be covered by `blocks`).
    pub fn slot(&self, pos: usize) -> u32 {
        self.blocks[pos / KV_BLOCK] * KV_BLOCK as u32 + (pos % KV_BLOCK) as u32
    }

    /// Grow the block table to hold `new_len` tokens. On failure nothing is taken.
    pub fn reserve(&mut self, new_len: usize, pool: &mut BlockPool) -> bool {
        let need = new_len.div_ceil(KV_BLOCK).saturating_sub(self.blocks.len());
        if need > pool.n_free() {
            return false;
        }
        for _ in 0..need {
            self.blocks.push(pool.alloc().expect("checked above"));
        }
        true
    }

    /// Forget tokens from `len` on, returning whole blocks no longer needed.
    pub fn truncate(&mut self, len: usize, pool: &mut BlockPool) {
        self.len = self.len.min(len);
        let keep = self.len.div_ceil(KV_BLOCK);
        pool.release(self.blocks.drain(keep..));
    }

    pub fn release_all(&mut self, pool: &mut BlockPool) {
        self.truncate(0, pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_truncate_and_slots() {
        let mut pool = BlockPool::new(4);
        let mut s = SeqCache::default();
        assert!(s.reserve(17, &mut pool));
        assert_eq!(s.blocks.len(), 2);
        assert_eq!(pool.n_free(), 2);
        s.len = 17;
        assert_eq!(s.slot(16), s.blocks[1] * 16);
        assert!(!s.reserve(100, &mut pool));
        assert_eq!(pool.n_free(), 2, "a failed reserve takes nothing");
        s.truncate(16, &mut pool);
        assert_eq!((s.len, s.blocks.len(), pool.n_free()), (16, 1, 3));
        s.release_all(&mut pool);
        assert_eq!(pool.n_free(), 4);
    }

    #[test]
    fn registered_blocks_are_shared_survive_release_and_are_recycled_last() {
        let mut pool = BlockPool::new(3);
        let a = pool.alloc().unwrap();
        let h = prefix_hashes(&[7; 32]);
        assert_eq!(h.len(), 2);
        assert_ne!(h[0], h[1]);
        assert_ne!(prefix_hashes(&[8; 16])[0], h[0]);
        pool.register(a, h[0]);
        assert_eq!(pool.lookup(h[0]), Some((a, false)));
        pool.share(a);
        pool.release([a]);
        assert_eq!(pool.n_free(), 2, "still held once");
        pool.release([a]);
        assert_eq!(pool.n_free(), 3);
        assert_eq!(pool.lookup(h[0]), Some((a, true)), "findable while free");
        // Older free blocks go first; the registered one last, then it is forgotten.
        let b = pool.alloc().unwrap();
        let c = pool.alloc().unwrap();
        assert!(b != a && c != a);
        pool.share(a);
        assert_eq!(pool.n_free(), 0);
        pool.release([a, b, c]);
        let order: Vec<u32> = (0..3).map(|_| pool.alloc().unwrap()).collect();
        assert_eq!(order, [a, b, c]);
        assert_eq!(pool.lookup(h[0]), None, "handed out again: forgotten");
    }

    /// The lazy free list hands out the same blocks in the same order as a plain list from which
    /// `share` removes the block, over a long random run of alloc / share / release.
    #[test]
    fn lazy_free_list_matches_a_plain_one() {
        let n = 12;
        let mut pool = BlockPool::new(n);
        let mut plain: VecDeque<u32> = (0..n as u32).collect();
        let mut refs = vec![0u32; n];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = |m: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % m
        };
        for _ in 0..20_000 {
            match rand(3) {
                0 => {
                    let got = pool.alloc();
                    let want = plain.pop_front();
                    assert_eq!(got, want);
                    if let Some(b) = want {
                        refs[b as usize] = 1;
                    }
                }
                1 => {
                    // Share any block, free or held (a registered prefix block).
                    let b = rand(n) as u32;
                    if refs[b as usize] == 0 {
                        plain.retain(|&f| f != b);
                    }
                    refs[b as usize] += 1;
                    pool.share(b);
                }
                _ => {
                    let held: Vec<u32> = (0..n as u32).filter(|&b| refs[b as usize] > 0).collect();
                    if let Some(&b) = held.get(rand(held.len().max(1))) {
                        refs[b as usize] -= 1;
                        if refs[b as usize] == 0 {
                            plain.push_back(b);
                        }
                        pool.release([b]);
                    }
                }
            }
            assert_eq!(pool.n_free(), plain.len());
            assert!(pool.free.len() <= 2 * n + 1, "stale entries are dropped");
        }
    }
}

//! Paged KV bookkeeping: fixed 16-token blocks handed out from one pool, a block table per
//! sequence. The K/V memory itself belongs to the backend; this only decides where tokens go.

use crate::backend::KV_BLOCK;

#[derive(Debug)]
pub struct BlockPool {
    free: Vec<u32>,
    n_blocks: usize,
}

impl BlockPool {
    pub fn new(n_blocks: usize) -> Self {
        BlockPool {
            free: (0..n_blocks as u32).rev().collect(),
            n_blocks,
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    pub fn alloc(&mut self) -> Option<u32> {
        self.free.pop()
    }

    pub fn release(&mut self, blocks: impl IntoIterator<Item = u32>) {
        self.free.extend(blocks);
    }
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
}

//! Activation memory: one preallocated device buffer used as a stack.
//!
//! `alloc` bumps a top offset; dropping a tensor marks its slot dead, and dead slots at the top
//! are popped, so the generic `forward` (which drops each layer's temporaries) reuses the same
//! memory layer after layer and the same sequence of allocations yields the same addresses step
//! after step (what captured CUDA graphs will need). `reset` (called by `begin_step`) empties the
//! stack.
//!
//! Sizing is lazy, with growth only between steps: an allocation past the end of the buffer gets
//! its own `cuMemAlloc`, freed (stream-ordered) when its slot is popped, and the next `reset`
//! replaces the buffer with one of 5/4 of the step's peak. So a new largest shape costs one
//! slower step, then runs from the arena; freeing as slots pop keeps that step's memory at its
//! peak, not at the sum of every allocation made past the end (a first prefill of a 42-layer
//! model otherwise holds several GiB until the step ends). `CudaBackend::reserve_activations`
//! presizes it.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

/// Alignment of every allocation, in bytes.
const ALIGN: usize = 256;

struct Slot {
    offset: usize,
    size: usize,
    live: bool,
    /// Its own buffer, when it lay past the end of the arena (freed as the slot is dropped).
    _overflow: Option<CudaSlice<u8>>,
}

pub struct Arena {
    stream: Arc<CudaStream>,
    buf: Option<CudaSlice<u8>>,
    base: u64,
    cap: usize,
    top: usize,
    peak: usize,
    stack: Vec<Slot>,
    generation: u64,
    /// Bumped whenever the buffer is replaced (its addresses change).
    epoch: u64,
}

/// A handle for freeing an allocation; stale after the next reset.
#[derive(Clone, Copy, Debug)]
pub struct AllocId {
    index: usize,
    generation: u64,
}

impl AllocId {
    /// A handle whose free does nothing (for a view of memory the arena holds for someone else).
    pub fn detached() -> Self {
        AllocId {
            index: usize::MAX,
            generation: u64::MAX,
        }
    }
}

impl Arena {
    pub fn new(stream: Arc<CudaStream>) -> Self {
        Arena {
            stream,
            buf: None,
            base: 0,
            cap: 0,
            top: 0,
            peak: 0,
            stack: Vec::new(),
            generation: 0,
            epoch: 0,
        }
    }

    /// Changes whenever the buffer moves (addresses recorded before are then stale).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Largest stack height (bytes) since the last reset.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Ensure the buffer holds at least `bytes`. Only between steps: the stack must be empty.
    pub fn reserve(&mut self, bytes: usize) -> anyhow::Result<()> {
        if bytes <= self.cap {
            return Ok(());
        }
        assert!(
            self.stack.iter().all(|s| !s.live),
            "arena grown while tensors are live"
        );
        let bytes = bytes.next_multiple_of(1 << 20);
        // Work queued on the old buffer must finish before it is freed.
        self.stream.synchronize()?;
        self.buf = None;
        // SAFETY: u8 has no invalid bit patterns; the memory is written before it is read.
        let buf = unsafe { self.stream.alloc::<u8>(bytes) }?;
        self.base = {
            let (p, _sync) = buf.device_ptr(&self.stream);
            p
        };
        self.buf = Some(buf);
        self.cap = bytes;
        self.epoch += 1;
        Ok(())
    }

    /// Start a step: empty the stack, and grow the buffer if the last step overflowed it.
    pub fn reset(&mut self) -> anyhow::Result<()> {
        let want = self.peak;
        self.stack.clear();
        self.top = 0;
        self.peak = 0;
        self.generation += 1;
        if want > self.cap {
            self.reserve(want + want / 4)?;
        }
        Ok(())
    }

    /// A device address for `bytes` bytes, valid until the handle is freed or the next reset.
    pub fn alloc(&mut self, bytes: usize) -> anyhow::Result<(u64, AllocId)> {
        let size = bytes.max(1).next_multiple_of(ALIGN);
        let offset = self.top;
        self.top += size;
        self.peak = self.peak.max(self.top);
        let (ptr, overflow) = if self.top <= self.cap {
            (self.base + offset as u64, None)
        } else {
            // SAFETY: as in `reserve`.
            let buf = unsafe { self.stream.alloc::<u8>(size) }?;
            let p = {
                let (p, _sync) = buf.device_ptr(&self.stream);
                p
            };
            (p, Some(buf))
        };
        self.stack.push(Slot {
            offset,
            size,
            live: true,
            _overflow: overflow,
        });
        Ok((
            ptr,
            AllocId {
                index: self.stack.len() - 1,
                generation: self.generation,
            },
        ))
    }

    /// Free an allocation: mark it dead and pop dead slots off the top (an overflow buffer is
    /// freed in stream order: kernels queued on it still run first).
    pub fn free(&mut self, id: AllocId) {
        if id.generation != self.generation {
            return;
        }
        if let Some(s) = self.stack.get_mut(id.index) {
            s.live = false;
        }
        while self.stack.last().is_some_and(|s| !s.live) {
            let s = self.stack.pop().expect("non-empty");
            self.top = s.offset;
            debug_assert_eq!(s.offset + s.size, self.top + s.size);
        }
    }
}

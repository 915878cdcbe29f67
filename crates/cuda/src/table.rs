//! Where a table only `embed` reads is kept (`Backend::upload_table`). Gemma 4's
//! per-layer-embedding table is vocab × layers × 256 values, several GB on E2B/E4B and often
//! their largest tensor, yet a step reads one row per token. When it does not fit in the
//! device memory left after the other weights, the KV pools and the reserve, it stays in
//! page-locked host memory mapped into the device's address space: the same `embed` kernel
//! reads just the step's rows over PCIe. No host work per step, and the address is fixed, so
//! recorded CUDA graphs stay valid (a staging copy would need both a host-side gather and a
//! copy node per step).

use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use cudarc::driver::{sys, CudaContext, CudaStream, PinnedHostSlice};

/// Where `upload_table` puts a table (`kestrel --ple`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TablePlacement {
    /// Device memory when the table fits with `reserve` to spare, else host memory.
    #[default]
    Auto,
    Device,
    Host,
}

/// Whether a table of `bytes` goes to device memory, with `free` bytes free on the device now
/// (after the other weights and the KV pools) and `reserve` bytes to leave for the activation
/// arena, scratch and cuBLAS.
pub fn table_on_device(
    placement: TablePlacement,
    bytes: usize,
    free: usize,
    reserve: usize,
) -> bool {
    match placement {
        TablePlacement::Device => true,
        TablePlacement::Host => false,
        TablePlacement::Auto => bytes.saturating_add(reserve) <= free,
    }
}

/// What `upload_table` decided for one table, for the load message.
#[derive(Clone, Debug)]
pub struct TableReport {
    pub name: String,
    pub bytes: usize,
    pub placement: TablePlacement,
    pub on_device: bool,
    /// Device memory free before the table, and the reserve kept.
    pub free: usize,
    pub reserve: usize,
}

impl fmt::Display for TableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let place = if self.on_device {
            "on the GPU"
        } else {
            "in pinned host memory, rows read over PCIe"
        };
        write!(f, "{} ({:.2} GiB) {place} (", self.name, gib(self.bytes))?;
        match self.placement {
            TablePlacement::Auto => write!(
                f,
                "{:.2} GiB free after the other weights and the KV cache, {:.2} GiB reserve",
                gib(self.free),
                gib(self.reserve)
            )?,
            TablePlacement::Device | TablePlacement::Host => write!(f, "forced")?,
        }
        write!(f, ")")
    }
}

/// A table in page-locked, device-mapped host memory.
pub(crate) struct HostTable {
    _mem: PinnedHostSlice<u8>,
    stream: Arc<CudaStream>,
}

impl HostTable {
    /// Copy `bytes` into new mapped host memory; returns it and its device address.
    pub(crate) fn new(
        ctx: &Arc<CudaContext>,
        stream: &Arc<CudaStream>,
        bytes: &[u8],
    ) -> Result<(Self, u64)> {
        // Write-combined: the host only writes it, once; the device's reads skip the CPU
        // caches' snooping.
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_WRITECOMBINED;
        // SAFETY: every byte is written below before the device can read it.
        let mut mem = unsafe { ctx.alloc_pinned_with_flags::<u8>(bytes.len().max(1), flags) }
            .map_err(|e| anyhow!("cuMemHostAlloc of {} bytes: {e:?}", bytes.len()))?;
        let host = mem.as_mut_slice().map_err(|e| anyhow!("{e:?}"))?;
        host[..bytes.len()].copy_from_slice(bytes);
        let mut dptr: sys::CUdeviceptr = 0;
        // SAFETY: `host` was allocated by cuMemHostAlloc with DEVICEMAP in this (bound)
        // context; flags must be 0.
        unsafe {
            sys::cuMemHostGetDevicePointer_v2(&mut dptr, host.as_mut_ptr() as *mut c_void, 0)
        }
        .result()
        .map_err(|e| anyhow!("cuMemHostGetDevicePointer: {e:?}"))?;
        Ok((
            HostTable {
                _mem: mem,
                stream: stream.clone(),
            },
            dptr,
        ))
    }
}

impl Drop for HostTable {
    fn drop(&mut self) {
        // Kernels queued on the stream may still read it; freeing page-locked memory does not
        // wait for them.
        if let Err(e) = self.stream.synchronize() {
            eprintln!("kestrel-cuda: freeing a host-resident table: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    #[test]
    fn auto_keeps_the_table_on_the_device_only_when_it_fits_with_the_reserve() {
        use TablePlacement::*;
        // E4B-sized table (2.6 GiB at 8 bits) on a card with 60 GiB free: on the device.
        assert!(table_on_device(Auto, 2_800_000_000, 60 * GIB, 7 * GIB));
        // 4 GiB free, 2 GiB reserve: 2.6 GiB does not fit, 1.9 GiB does, 2 GiB exactly does.
        assert!(!table_on_device(Auto, 2_800_000_000, 4 * GIB, 2 * GIB));
        assert!(table_on_device(Auto, 1_900_000_000, 4 * GIB, 2 * GIB));
        assert!(table_on_device(Auto, 2 * GIB, 4 * GIB, 2 * GIB));
        assert!(!table_on_device(Auto, 2 * GIB + 1, 4 * GIB, 2 * GIB));
        // Less free than the reserve: nothing fits; no overflow at the extremes.
        assert!(!table_on_device(Auto, 1, GIB, 2 * GIB));
        assert!(!table_on_device(Auto, usize::MAX, 60 * GIB, 2 * GIB));
        // Forced placements ignore the sizes.
        assert!(table_on_device(Device, 100 * GIB, GIB, 2 * GIB));
        assert!(!table_on_device(Host, 1, 100 * GIB, 0));
    }

    #[test]
    fn the_report_says_where_and_why() {
        let r = TableReport {
            name: "per_layer_token_embd.weight".into(),
            bytes: 3 * GIB,
            placement: TablePlacement::Auto,
            on_device: false,
            free: GIB,
            reserve: 2 * GIB,
        };
        assert_eq!(
            r.to_string(),
            "per_layer_token_embd.weight (3.00 GiB) in pinned host memory, rows read over PCIe \
             (1.00 GiB free after the other weights and the KV cache, 2.00 GiB reserve)"
        );
        let forced = TableReport {
            placement: TablePlacement::Device,
            on_device: true,
            ..r
        };
        assert_eq!(
            forced.to_string(),
            "per_layer_token_embd.weight (3.00 GiB) on the GPU (forced)"
        );
    }
}

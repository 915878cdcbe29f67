//! Compiling kernels with NVRTC to CUBIN for one exact architecture, with an on-disk cache.
//!
//! CUBIN (not PTX) because the driver refuses PTX made by an NVRTC newer than itself, while a
//! CUBIN for the device's own `sm_XY` loads either way. Cache files are
//! `<dir>/<module>-sm_XY-<hash>.cubin`, `hash` = SHA-256 of the program text and the options,
//! `dir` = `$KESTREL_HOME/kernels` or `~/.cache/kestrel/kernels`. A cache hit needs no NVRTC
//! at all, so a machine whose cache is warm runs without libnvrtc.

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};

use crate::kernels::KernelModule;

/// Whether libnvrtc can be loaded (by name, through the dynamic loader's search path).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_available() {
        bail!("libnvrtc cannot be loaded");
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| anyhow!("nvrtcVersion: {e:?}"))?;
    Ok((major, minor))
}

/// Options every module is compiled with. Default float semantics (IEEE division and square
/// root, no fast math): kernels that must match the CPU bit for bit rely on them.
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ]
}

/// Compile one module to a CUBIN for `arch` (e.g. `sm_90`). Errors carry NVRTC's log.
pub fn compile_cubin(module: &KernelModule, arch: &str) -> Result<Vec<u8>> {
    if !nvrtc_available() {
        bail!(
            "libnvrtc cannot be loaded: install the CUDA toolkit's NVRTC (or `pip install nvidia-cuda-nvrtc==13.0.88`) \
             and put its lib folder on LD_LIBRARY_PATH"
        );
    }
    let src = CString::new(module.program()).context("kernel source contains a NUL byte")?;
    let name = CString::new(format!("{}.cu", module.name)).expect("no NUL in module names");
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| anyhow!("nvrtcCreateProgram: {e:?}"))?;
    let opts = options(arch);
    // SAFETY: `prog` is a live program; it is destroyed exactly once below.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let out = match compiled {
        Err(e) => Err(anyhow!(
            "NVRTC failed to compile kernels/{}.cu for {arch} ({e:?}):\n{}",
            module.name,
            program_log(prog)
        )),
        Ok(()) => get_cubin(prog),
    };
    // SAFETY: created above, not destroyed yet.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

fn program_log(prog: sys::nvrtcProgram) -> String {
    // SAFETY: `prog` is live; the log is NUL-terminated.
    match unsafe { result::get_program_log(prog) } {
        Ok(raw) => unsafe { CStr::from_ptr(raw.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
        Err(e) => format!("(no log: {e:?})"),
    }
}

fn get_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: `prog` was compiled for a real architecture, so it has a CUBIN of `size` bytes.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| anyhow!("nvrtcGetCUBINSize: {e:?}"))?;
    if size == 0 {
        bail!("NVRTC produced no CUBIN");
    }
    let mut buf = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|e| anyhow!("nvrtcGetCUBIN: {e:?}"))?;
    Ok(buf)
}

/// The kernel cache folder: `$KESTREL_HOME/kernels`, else `~/.cache/kestrel/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("KESTREL_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h).join("kernels"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/kestrel/kernels"))
}

/// Cache key of a module for an architecture.
pub fn cache_key(module: &KernelModule, arch: &str) -> String {
    let mut h = Sha256::new();
    h.update(module.program().as_bytes());
    for o in options(arch) {
        h.update([0u8]);
        h.update(o.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{arch}-{hex}", module.name)
}

/// A cached CUBIN for the module, or a fresh compile (stored in the cache when it can be).
/// Returns the CUBIN and whether it came from the cache.
pub fn cubin(module: &KernelModule, arch: &str) -> Result<(Vec<u8>, bool)> {
    let path = cache_dir().map(|d| d.join(format!("{}.cubin", cache_key(module, arch))));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok((bytes, true));
            }
        }
    }
    let bytes = compile_cubin(module, arch)?;
    if let Some(p) = &path {
        store(p, &bytes);
    }
    Ok((bytes, false))
}

/// Remove a cache entry (after the driver refused to load it).
pub fn evict(module: &KernelModule, arch: &str) {
    if let Some(d) = cache_dir() {
        let _ = std::fs::remove_file(d.join(format!("{}.cubin", cache_key(module, arch))));
    }
}

/// Write atomically (temp file + rename); a cache that cannot be written is not an error.
fn store(path: &PathBuf, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

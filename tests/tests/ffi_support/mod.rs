//! Shared by the `ffi_*` and `real_programs` tests: finding (and building)
//! `librangealloc.so`, compiling the C/C++ programs in `tests/c/`, and running
//! processes under a time limit, optionally with the library preloaded.
//!
//! The library: `$RANGEALLOC_SO` if set (used as is, it must exist); otherwise the tests
//! run `cargo build --release -p rangealloc-ffi` once per test binary (a no-op when up
//! to date, so a stale library is never tested) and use `release/librangealloc.so` in
//! `$CARGO_TARGET_DIR`, or in `<workspace>/target` when that is unset.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `librangealloc.so`, built if needed (see the module comment).
pub fn so_path() -> &'static Path {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        if let Some(path) = std::env::var_os("RANGEALLOC_SO") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "RANGEALLOC_SO={} does not exist",
                path.display()
            );
            return path.canonicalize().expect("canonical RANGEALLOC_SO");
        }
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => workspace().join(dir), // `join` keeps an absolute path as is
            None => workspace().join("target"),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "rangealloc-ffi"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(workspace())
            .status()
            .expect("run cargo build for librangealloc.so");
        assert!(
            status.success(),
            "cargo build --release -p rangealloc-ffi failed"
        );
        let so = target.join("release/librangealloc.so");
        assert!(so.is_file(), "{} missing after the build", so.display());
        so
    })
}

pub fn c_source(name: &str) -> PathBuf {
    workspace().join("tests/c").join(name)
}

/// Where compiled test programs go (inside the target directory).
fn build_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rangealloc-c");
    std::fs::create_dir_all(&dir).expect("create the C build directory");
    dir
}

/// True if `program` is on `PATH` (or is an existing path).
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

pub enum Lang {
    C,
    Cxx,
}

/// Compiles `tests/c/<source>` into an executable (or, with `-shared` among `extra`, a
/// library) named `output`, and returns its path. Renamed into place so that test
/// binaries running at once never see a half-written file.
pub fn compile(source: &str, output: &str, lang: Lang, extra: &[&str]) -> PathBuf {
    compile_with(source, output, lang, extra, true)
}

/// `compile` of a C program without `-I ffi/include`: the header must come from the
/// flags in `extra` (an installed prefix's `pkg-config --cflags`).
pub fn compile_plain(source: &str, output: &str, extra: &[&str]) -> PathBuf {
    compile_with(source, output, Lang::C, extra, false)
}

fn compile_with(
    source: &str,
    output: &str,
    lang: Lang,
    extra: &[&str],
    source_tree_header: bool,
) -> PathBuf {
    let (compiler, std) = match lang {
        Lang::C => ("cc", "-std=gnu11"),
        Lang::Cxx => ("c++", "-std=gnu++17"),
    };
    let out = build_dir().join(output);
    let tmp = build_dir().join(format!("{output}.{}.tmp", std::process::id()));
    let include = if source_tree_header {
        workspace().join("ffi/include")
    } else {
        // Any directory without rangealloc.h keeps the argument list uniform.
        workspace().join("tests/c")
    };
    let tests_c = workspace().join("tests/c");
    let result = Command::new(compiler)
        .args([
            std,
            "-O2",
            "-g",
            "-Wall",
            "-Wextra",
            "-Wno-use-after-free",
            "-pthread",
        ])
        // The tests make impossible and odd requests on purpose: do not let the
        // compiler fold or drop allocation calls.
        .arg("-fno-builtin")
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(&tests_c)
        .arg("-o")
        .arg(&tmp)
        .arg(c_source(source))
        .args(extra)
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
    assert!(
        result.status.success(),
        "{compiler} {source} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&tmp, &out).expect("move the compiled program into place");
    out
}

/// What a finished process did.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// Panics with the captured output unless the process exited 0.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what}: {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            tail(&self.stdout),
            tail(&self.stderr)
        );
        self
    }

    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }
}

fn tail(s: &str) -> &str {
    const KEEP: usize = 8000;
    let mut start = s.len().saturating_sub(KEEP);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// How long a finished process's leftovers may keep its output open.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

/// Runs `cmd` in its own process group with output captured; kills the whole group
/// and panics if it runs longer than `limit`.
pub fn run(mut cmd: Command, limit: Duration) -> Outcome {
    let description = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {description}: {e}"));
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let pgid = child.id() as libc::pid_t;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if start.elapsed() > limit {
            // SAFETY: signalling a process group we created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            let stdout =
                String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
            let stderr =
                String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
            panic!(
                "timed out after {limit:?}: {description}\n--- stdout\n{}\n--- stderr\n{}",
                tail(&stdout),
                tail(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    // A process left behind (a daemon a script forgot) keeps the pipes open. It is a
    // member of the group, so the group id is still ours to signal.
    let grace = Instant::now();
    while !(out_reader.is_finished() && err_reader.is_finished()) {
        if grace.elapsed() > LEFTOVER_GRACE {
            // SAFETY: signalling our process group, which still has a member.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            panic!("{description} exited but left processes holding its output; killed them");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Outcome {
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// `program args...` with `librangealloc.so` preloaded.
pub fn preloaded(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LD_PRELOAD", so_path());
    cmd
}

/// Asserts that `stdout` has each of `lines` as a whole line.
pub fn assert_lines(stdout: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            stdout.lines().any(|l| l == *line),
            "missing line {line:?} in output:\n{}",
            tail(stdout)
        );
    }
}

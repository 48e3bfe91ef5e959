//! Release information for `portcullis --version` and `portcullis_build_info`: the git
//! commit, the build date and the rustc version, read at build time.
//!
//! Never fails for want of git: without a git binary, outside a checkout (the Docker
//! build copies sources without `.git`), or inside some other repository (sources
//! unpacked in a directory of an unrelated checkout), the commit is `unknown`. The build
//! date is `SOURCE_DATE_EPOCH` when set (reproducible builds), else the commit's date,
//! else today. The script reruns only when HEAD, the ref it points to, the packed refs,
//! `SOURCE_DATE_EPOCH` or this file change, not on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());

    let repo = Repo::find(&root);
    let commit = repo.as_ref().and_then(|r| r.commit());
    if let Some(r) = &repo {
        r.watch();
    }
    let date_secs = match std::env::var("SOURCE_DATE_EPOCH") {
        // The reproducible-builds specification: a malformed value must fail the build,
        // never be replaced silently by another date.
        // Empty counts as unset (a Dockerfile's `ARG SOURCE_DATE_EPOCH` not given).
        Ok(v) if v.trim().is_empty() => None,
        Ok(v) => Some(v.trim().parse::<u64>().unwrap_or_else(|_| {
            panic!("SOURCE_DATE_EPOCH must be a number of seconds since the Unix epoch, got {v:?}")
        })),
        Err(_) => None,
    }
    .or_else(|| repo.as_ref().and_then(|r| r.commit_time()))
    .unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });

    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let rustc = run(Command::new(rustc).arg("--version"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .filter(|v| v.chars().all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c)))
        .unwrap_or_else(|| "unknown".into());

    println!(
        "cargo:rustc-env=PORTCULLIS_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!("cargo:rustc-env=PORTCULLIS_BUILD_DATE={}", date(date_secs));
    println!("cargo:rustc-env=PORTCULLIS_RUSTC={rustc}");
}

/// A git checkout whose top level is this package's directory.
struct Repo {
    root: PathBuf,
}

impl Repo {
    fn find(root: &Path) -> Option<Repo> {
        let top = git(root, &["rev-parse", "--show-toplevel"])?;
        // Only this package's own checkout: a parent directory's repository says nothing
        // about these sources.
        let same = std::fs::canonicalize(&top).ok()? == std::fs::canonicalize(root).ok()?;
        same.then(|| Repo {
            root: root.to_path_buf(),
        })
    }

    /// The abbreviated commit of HEAD, checked to be hexadecimal.
    fn commit(&self) -> Option<String> {
        git(&self.root, &["rev-parse", "--short=7", "HEAD"])
            .filter(|c| (7..=40).contains(&c.len()) && c.chars().all(|c| c.is_ascii_hexdigit()))
    }

    fn commit_time(&self) -> Option<u64> {
        git(&self.root, &["log", "-1", "--format=%ct", "HEAD"])?.parse().ok()
    }

    /// Reruns the script when HEAD moves: HEAD itself (a checkout, a detached HEAD), the
    /// branch it points to (a commit) and the packed refs (a `git pack-refs`). `.git` may
    /// be a directory or, in a worktree, a file naming one: git says where each lives.
    fn watch(&self) {
        let path = |p: &str| {
            // Relative to the directory git ran in (older gits have no --path-format).
            git(&self.root, &["rev-parse", "--git-path", p]).map(|path| self.root.join(path))
        };
        let mut watched: Vec<PathBuf> = ["HEAD", "packed-refs", "reftable"]
            .into_iter()
            .filter_map(path)
            .filter(|p| p.exists())
            .collect();
        if let Some(branch) = git(&self.root, &["symbolic-ref", "-q", "HEAD"]).and_then(|r| path(&r)) {
            // A branch kept only in packed-refs is watched by its directory, where the
            // next commit writes it: a path that does not exist would rerun the script on
            // every build.
            match branch.exists() {
                true => watched.push(branch),
                false => watched.extend(branch.parent().filter(|d| d.exists()).map(Path::to_path_buf)),
            }
        }
        for w in watched {
            println!("cargo:rerun-if-changed={}", w.display());
        }
    }
}

/// Runs git in `dir`; its trimmed output, or None if git is absent or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    run(Command::new("git").arg("-C").arg(dir).args(args))
}

fn run(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(std::process::Stdio::null()).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `YYYY-MM-DD` (UTC) of a Unix time: days to the civil calendar (Howard Hinnant's
/// algorithm), so the script needs no crate.
fn date(secs: u64) -> String {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

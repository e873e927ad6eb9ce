//! `rr_util::fs`: atomic writes and staging directories leave either the complete output or
//! nothing, never a temporary beside it, and never write through a planted symlink.

use std::fs;
use std::path::Path;

use rr_util::fs::{
    ensure_output_apart, recover, write_atomic, write_atomic_with, write_new_atomic_with, DirLock,
    StagingDir,
};

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn err_text(r: anyhow::Result<()>) -> String {
    let msg = format!("{:#}", r.unwrap_err());
    assert!(!msg.contains('\n'), "error spans several lines: {msg}");
    msg
}

#[test]
fn write_atomic_creates_and_replaces() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.json");
    write_atomic(&path, b"one").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"one");
    write_atomic(&path, b"two").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"two");
    assert_eq!(entries(tmp.path()), ["a.json"]);
    // Streamed, through the buffered writer.
    write_atomic_with(&path, |w| {
        for i in 0..1000 {
            writeln!(w, "{i}")?;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1000);
    assert_eq!(entries(tmp.path()), ["a.json"]);
}

#[cfg(unix)]
#[test]
fn written_files_get_the_usual_mode() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    fs::File::create(&plain).unwrap();
    let atomic = tmp.path().join("atomic");
    write_atomic(&atomic, b"x").unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&atomic), mode(&plain));
}

#[test]
fn failed_writes_leave_the_old_file_and_no_temporary() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.jsonl");
    write_atomic(&path, b"old\n").unwrap();
    // An error of the caller's own passes through unchanged.
    let msg = err_text(write_atomic_with(&path, |w| {
        w.write_all(b"half")?;
        anyhow::bail!("input.txt:3: malformed")
    }));
    assert_eq!(msg, "input.txt:3: malformed");
    // A bare I/O error is given the path.
    let msg = err_text(write_atomic_with(&path, |_| {
        Err(std::io::Error::other("disk on fire").into())
    }));
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("disk on fire"),
        "{msg}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"old\n");
    assert_eq!(entries(tmp.path()), ["m.jsonl"]);
}

#[test]
fn errors_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("missing/parent/x.json");
    let msg = err_text(write_atomic(&path, b"x"));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    // A directory in the way.
    let dir = tmp.path().join("d");
    fs::create_dir(&dir).unwrap();
    let msg = err_text(write_atomic(&dir, b"x"));
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert_eq!(entries(tmp.path()), ["d"]);
    assert!(write_atomic(Path::new("/"), b"x").is_err());
}

#[cfg(unix)]
#[test]
fn planted_symlinks_are_replaced_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    let path = tmp.path().join("out.json");
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    write_atomic(&path, b"new").unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&path).unwrap(), b"new");
    // The refusing variant refuses a symlink, even a dangling one.
    let dangling = tmp.path().join("dangling");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
    let msg = err_text(write_new_atomic_with(&dangling, |w| Ok(w.write_all(b"x")?)));
    assert!(msg.contains("already exists"), "{msg}");
    assert!(!tmp.path().join("nowhere").exists());
}

#[test]
fn write_new_refuses_existing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("synth.jsonl");
    write_new_atomic_with(&path, |w| Ok(w.write_all(b"first")?)).unwrap();
    let msg = err_text(write_new_atomic_with(&path, |_| {
        panic!("must not run for an existing file")
    }));
    assert!(
        msg.contains("already exists") && msg.contains("synth.jsonl"),
        "{msg}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"first");
    // A file that appears while writing is not overwritten either.
    let msg = err_text(write_new_atomic_with(&tmp.path().join("race"), |w| {
        fs::write(tmp.path().join("race"), "theirs").unwrap();
        Ok(w.write_all(b"ours")?)
    }));
    assert!(msg.contains("already exists"), "{msg}");
    assert_eq!(
        fs::read_to_string(tmp.path().join("race")).unwrap(),
        "theirs"
    );
    assert_eq!(entries(tmp.path()), ["race", "synth.jsonl"]);
}

#[test]
fn staging_dir_commits_into_place() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("new/parent/out");
    let staging = StagingDir::create(&out).unwrap();
    assert!(
        staging.path().parent() == Some(&tmp.path().join("new/parent")),
        "the temporary directory is a sibling"
    );
    let tmp_name = staging.path().file_name().unwrap().to_string_lossy();
    assert!(tmp_name.starts_with(".out."), "hidden: {tmp_name}");
    fs::write(staging.path().join("config.json"), b"{}").unwrap();
    assert!(!out.exists(), "nothing under the final name before commit");
    staging.commit().unwrap();
    assert_eq!(entries(&out), ["config.json"]);
    assert_eq!(entries(&tmp.path().join("new/parent")), ["out"]);
}

#[test]
fn dropped_staging_dir_removes_itself_and_the_parents_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("kept")).unwrap();
    let out = tmp.path().join("kept/new/parent/out");
    {
        let staging = StagingDir::create(&out).unwrap();
        fs::create_dir(staging.path().join("sub")).unwrap();
        fs::write(staging.path().join("sub/model.safetensors"), b"partial").unwrap();
        // dropped without commit, as on any error
    }
    assert_eq!(entries(tmp.path()), ["kept"]);
    assert!(entries(&tmp.path().join("kept")).is_empty());
    // A path without a final name is refused.
    assert!(StagingDir::create(Path::new("..")).is_err());
}

#[test]
fn existing_outputs_are_refused_and_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("taken");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep.txt"), "mine").unwrap();
    let msg = match StagingDir::create(&out) {
        Ok(_) => panic!("an existing output was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        msg.contains("taken") && msg.contains("already exists"),
        "{msg}"
    );
    assert_eq!(entries(&out), ["keep.txt"]);
    // An output that appears while staging is not replaced.
    let late = tmp.path().join("late");
    let staging = StagingDir::create(&late).unwrap();
    fs::write(staging.path().join("new.txt"), "new").unwrap();
    fs::create_dir(&late).unwrap();
    let msg = err_text(staging.commit());
    assert!(msg.contains("late"), "{msg}");
    assert!(entries(&late).is_empty());
    assert_eq!(entries(tmp.path()), ["late", "taken"]);
}

#[test]
fn replacing_staging_dir_swaps_only_when_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rec");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("old.txt"), "old").unwrap();
    // Dropped uncommitted: the old output is untouched.
    {
        let staging = StagingDir::replacing(&out).unwrap();
        fs::write(staging.path().join("new.txt"), "new").unwrap();
    }
    assert_eq!(entries(tmp.path()), ["rec"]);
    assert_eq!(entries(&out), ["old.txt"]);
    // Committed: replaced, nothing left beside it.
    let staging = StagingDir::replacing(&out).unwrap();
    fs::write(staging.path().join("new.txt"), "new").unwrap();
    assert_eq!(entries(&out), ["old.txt"], "old output intact until commit");
    staging.commit().unwrap();
    assert_eq!(entries(&out), ["new.txt"]);
    assert_eq!(entries(tmp.path()), ["rec"]);
    // A file in the way is replaced as well; a missing output is simply created.
    let file = tmp.path().join("file");
    fs::write(&file, "x").unwrap();
    let staging = StagingDir::replacing(&file).unwrap();
    staging.commit().unwrap();
    assert!(file.is_dir());
    let fresh = tmp.path().join("fresh");
    StagingDir::replacing(&fresh).unwrap().commit().unwrap();
    assert!(fresh.is_dir());
    assert_eq!(entries(tmp.path()), ["file", "fresh", "rec"]);
}

/// A replacement killed between its two renames left the old output aside and none in place:
/// the next writer puts it back. Killed before the clean-up: the held copy is removed.
/// Unfinished temporaries are removed either way.
#[test]
fn interrupted_replacements_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    // Killed between the renames: `model` missing, the old one held aside.
    let holder = dir.path().join(".model.abc123.old");
    std::fs::create_dir_all(holder.join("model")).unwrap();
    std::fs::write(holder.join("model").join("config.json"), "old").unwrap();
    std::fs::create_dir(dir.path().join(".model.xyz789.tmp")).unwrap();
    std::fs::write(dir.path().join("other.txt"), "keep").unwrap();
    recover(&out).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("config.json")).unwrap(),
        "old"
    );
    assert_eq!(entries(dir.path()), ["model", "other.txt"]);
    // Killed after the new output was in place: the held copy goes.
    std::fs::create_dir_all(holder.join("model")).unwrap();
    recover(&out).unwrap();
    assert_eq!(entries(dir.path()), ["model", "other.txt"]);
    assert_eq!(
        std::fs::read_to_string(out.join("config.json")).unwrap(),
        "old"
    );
    // A staging directory for the same output recovers first, so a leftover never blocks it.
    std::fs::create_dir(dir.path().join(".model.qqq111.tmp")).unwrap();
    let staging = StagingDir::replacing(&out).unwrap();
    std::fs::write(staging.path().join("config.json"), "new").unwrap();
    staging.commit().unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("config.json")).unwrap(),
        "new"
    );
    assert_eq!(entries(dir.path()), ["model", "other.txt"]);
}

#[test]
fn outputs_inside_or_around_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    for out in [
        model.clone(),
        model.join("sub"),
        dir.path().to_path_buf(),
        link.clone(),
        link.join("new/deeper"),
        model.join("..").join("model"),
    ] {
        let e = err_text(ensure_output_apart(&out, &[&model]));
        assert!(
            e.contains("would overwrite the input"),
            "{}: {e}",
            out.display()
        );
    }
    assert!(ensure_output_apart(&dir.path().join("model2"), &[&model]).is_ok());
    assert!(ensure_output_apart(&dir.path().join("out/x"), &[&model]).is_ok());
}

#[test]
fn a_directory_lock_is_exclusive_and_stale_locks_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let lock = DirLock::acquire(dir.path()).unwrap();
    let e = DirLock::acquire(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains("in use by process") && e.contains(&std::process::id().to_string()),
        "{e}"
    );
    drop(lock);
    assert!(!dir.path().join(".lock").exists());
    // A lock of a process that is gone (pid beyond the kernel's range) is stale.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(
        dir.path().join(".lock"),
        format!("4194305 {}\n", host.trim()),
    )
    .unwrap();
    let lock = DirLock::acquire(dir.path()).unwrap();
    assert!(std::fs::read_to_string(dir.path().join(".lock"))
        .unwrap()
        .starts_with(&std::process::id().to_string()));
    drop(lock);
}

#[test]
fn text_reads_are_bounded() {
    let e = err_text(rr_util::fs::read_text_limited(Path::new("/dev/zero"), 1 << 20).map(|_| ()));
    assert!(e.contains("/dev/zero: larger than 1 MiB"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.txt");
    fs::write(&p, "héllo").unwrap();
    assert_eq!(rr_util::fs::read_text_limited(&p, 6).unwrap(), "héllo");
    assert!(rr_util::fs::read_text_limited(&p, 5).is_err());
}

//! Reading recipe, connection and catalog files: regular files only (a FIFO
//! would block a load forever, a device such as `/dev/zero` would never
//! end) and no bigger than [`MAX_FILE_BYTES`]. Symlinks are followed; the
//! kernel ends a loop of them (`ELOOP`), and folder walks bound their depth
//! and skip folders already on the way (`recipe::load::walk`).

use std::io::Read;
use std::path::Path;

/// The largest configuration file read (recipes, connections, catalog).
pub const MAX_FILE_BYTES: u64 = crate::yaml::MAX_DOCUMENT_BYTES as u64;

/// Reads a configuration file as UTF-8 text, refusing anything that is not
/// a regular file or is larger than [`MAX_FILE_BYTES`].
pub fn read_text(path: &Path) -> std::io::Result<String> {
    let refuse = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    // Checked before opening: opening a FIFO for reading blocks until a
    // writer comes.
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(refuse(kind_message(&meta)));
    }
    let file = std::fs::File::open(path)?;
    // And again on the handle, in case the name was swapped meanwhile.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse(kind_message(&meta)));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(refuse(too_large()));
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(refuse(too_large()));
    }
    Ok(text)
}

fn too_large() -> String {
    format!("larger than the {MAX_FILE_BYTES} byte limit of a configuration file")
}

fn kind_message(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    };
    format!("{kind}, not a regular file: only regular files are read as configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("patchbay-safefile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn devices_fifos_and_oversized_files_are_refused() {
        let e = read_text(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let d = dir("kinds");
        let fifo = d.join("r.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Without the check this read would block forever.
        let e = read_text(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let big = d.join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let e = read_text(&big).unwrap_err();
        assert!(e.to_string().contains("byte limit"), "{e}");
        let ok = d.join("ok.yaml");
        std::fs::write(&ok, "recipe: x\n").unwrap();
        assert_eq!(read_text(&ok).unwrap(), "recipe: x\n");
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let d = dir("loop");
        std::os::unix::fs::symlink(d.join("b.yaml"), d.join("a.yaml")).unwrap();
        std::os::unix::fs::symlink(d.join("a.yaml"), d.join("b.yaml")).unwrap();
        assert!(read_text(&d.join("a.yaml")).is_err());
    }
}

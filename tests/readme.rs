//! The README's first command and its curl lines, run exactly as written:
//! the sandbox engine takes a SendPulse delivery and the contact shows in
//! the emulated HighLevel.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Killed;

/// The shell commands of the README's first two `sh` blocks.
fn readme_blocks() -> (Vec<String>, Vec<String>) {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), l) => {
                // Join `\` continuations into one command.
                match b.last_mut() {
                    Some(prev) if prev.ends_with('\\') => {
                        prev.pop();
                        prev.push_str(l);
                    }
                    _ => b.push(l.to_string()),
                }
            }
            _ => {}
        }
    }
    (blocks[0].clone(), blocks[1].clone())
}

#[test]
fn the_readme_commands_show_the_created_contact() {
    let (setup, curls) = readme_blocks();
    let engine = setup[0].split('#').next().unwrap().trim().to_string();
    assert_eq!(
        engine, "cargo run --release -- run --sandbox",
        "the README's first command changed"
    );
    let args: Vec<&str> = engine
        .split_once(" -- ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();

    // A fresh folder with the bundled recipes, as a new checkout has.
    let dir = common::fresh_dir("readme");
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join("recipes").join(p.file_name().unwrap())).unwrap();
    }
    let child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(&args)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    let up = Instant::now();
    while Command::new("curl")
        .args(["-sf", "http://127.0.0.1:8787/readyz"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "the engine did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let post = Command::new("sh")
        .arg("-c")
        .arg(&curls[0])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&post.stdout);
    assert!(answer.contains("\"runs\":1"), "{answer}");
    let start = Instant::now();
    loop {
        let list = Command::new("sh")
            .arg("-c")
            .arg(&curls[1])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&list.stdout);
        if out.contains("\"email\":\"ada@example.com\"") {
            assert!(out.contains("\"lead\""), "{out}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no contact appeared: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

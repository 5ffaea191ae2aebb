//! Diagnostics: one problem in one file, with position, stable code and
//! message, rendered for people (rustc-like), machines (JSON) or GitHub.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::yaml::{LineIndex, Pos};

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fails validation.
    Error,
    /// Reported; fails only with `--deny-warnings`.
    Warning,
}

/// One problem, pointing at `file:line:col`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file, as given on the command line.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// Error or warning.
    pub severity: Severity,
    /// Stable kebab-case code, e.g. `unknown-operation`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when known (`did you mean ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
    /// The source line may hold a secret: never echo it.
    #[serde(skip)]
    pub hide_source: bool,
}

impl Diagnostic {
    /// An error at a position.
    pub fn error(file: &str, pos: Pos, code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_string(),
            line: pos.line,
            column: pos.col,
            severity: Severity::Error,
            code,
            message: message.into(),
            suggestion: None,
            hide_source: false,
        }
    }

    /// A warning at a position.
    pub fn warning(file: &str, pos: Pos, code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, pos, code, message)
        }
    }

    /// Adds a suggestion.
    pub fn suggest(mut self, suggestion: Option<String>) -> Self {
        self.suggestion = suggestion;
        self
    }

    /// `file:line:col: error[code]: message; suggestion` on one line.
    pub fn one_line(&self) -> String {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut s = format!(
            "{}:{}:{}: {sev}[{}]: {}",
            self.file, self.line, self.column, self.code, self.message
        );
        if let Some(sugg) = &self.suggestion {
            let _ = write!(s, "; {sugg}");
        }
        s
    }
}

/// `did you mean 'x'?` for the closest candidate, if one is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean '{c}'?"))
}

/// The candidate closest to `word` by edit distance, if close enough.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        let dist = strsim::levenshtein(word, c);
        let close = score >= 0.85 || dist * 3 <= word.len().max(c.len());
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Output formats of `validate` and `test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// rustc-like, with the source line and a caret.
    Human,
    /// One JSON object per diagnostic (`schemas/diagnostic.schema.json`).
    Json,
    /// GitHub Actions workflow commands.
    Github,
}

/// Renders diagnostics for people: the one-line form, then the source line
/// with a caret under the column.
pub fn render_human(diags: &[Diagnostic], sources: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut cached: Option<(String, LineIndex)> = None;
    for d in diags {
        let sev = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{sev}[{}]: {}", d.code, d.message);
        let _ = writeln!(out, "  --> {}:{}:{}", d.file, d.line, d.column);
        if cached.as_ref().is_none_or(|(f, _)| f != &d.file) {
            cached = sources(&d.file).map(|s| (d.file.clone(), LineIndex::new(&s)));
        }
        if let Some((_, idx)) = cached.as_ref().filter(|_| !d.hide_source) {
            let text = idx.line_text(d.line);
            if !text.is_empty() {
                let num = d.line.to_string();
                let pad = " ".repeat(num.len());
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{num} | {text}");
                let caret = " ".repeat(d.column.saturating_sub(1) as usize);
                let _ = writeln!(out, "{pad} | {caret}^");
            }
        }
        if let Some(s) = &d.suggestion {
            let _ = writeln!(out, "  = help: {s}");
        }
        out.push('\n');
    }
    out
}

/// Renders diagnostics as JSON lines, one object each.
pub fn render_json(diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags {
        out.push_str(&serde_json::to_string(d).expect("diagnostics serialize"));
        out.push('\n');
    }
    out
}

/// Renders diagnostics as GitHub Actions workflow commands.
pub fn render_github(diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags {
        let kind = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut msg = d.message.clone();
        if let Some(s) = &d.suggestion {
            msg.push_str("; ");
            msg.push_str(s);
        }
        let _ = writeln!(
            out,
            "::{kind} file={},line={},col={},title={}::{}",
            escape_property(&d.file),
            d.line,
            d.column,
            escape_property(d.code),
            escape_data(&msg)
        );
    }
    out
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// Reads a file for the human renderer.
pub fn read_source(file: &str) -> Option<String> {
    std::fs::read_to_string(Path::new(file)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Diagnostic {
        Diagnostic::error(
            "r.yaml",
            Pos::new(2, 5),
            "unknown-key",
            "unknown key `stpes`",
        )
        .suggest(Some("did you mean 'steps'?".into()))
    }

    #[test]
    fn human_output_shows_line_and_caret() {
        let out = render_human(&[sample()], &|_| Some("recipe: x\nsome: stpes\n".into()));
        assert!(out.contains("  --> r.yaml:2:5"), "{out}");
        assert!(out.contains("2 | some: stpes\n  |     ^"), "{out}");
        assert!(out.contains("= help: did you mean 'steps'?"), "{out}");
    }

    #[test]
    fn github_output_escapes_properties() {
        let mut d = sample();
        d.message = "a: b,\nc".into();
        let out = render_github(&[d]);
        assert_eq!(
            out,
            "::error file=r.yaml,line=2,col=5,title=unknown-key::a: b,%0Ac; did you mean 'steps'?\n"
        );
    }

    #[test]
    fn did_you_mean_finds_close_names_only() {
        let names = ["ghl.contacts.create", "ghl.notes.create"];
        assert_eq!(
            closest("ghl.contact.create", names),
            Some("ghl.contacts.create")
        );
        assert_eq!(closest("zzz", names), None);
    }
}

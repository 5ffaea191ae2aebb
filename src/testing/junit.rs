//! JUnit XML for CI systems: one `<testsuite>` per test file, one
//! `<testcase>` per case, a `<failure>` per failing case.

use std::fmt::Write as _;

use super::FileResult;

/// Escapes text for XML attributes and content; characters XML 1.0 cannot
/// hold (most control characters) are dropped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// The report.
pub fn render(files: &[FileResult], seconds: f64) -> String {
    let tests: usize = files.iter().map(|f| f.cases.len()).sum();
    let failures: usize = files
        .iter()
        .flat_map(|f| &f.cases)
        .filter(|c| !c.mismatches.is_empty())
        .count();
    let errors: usize = files.iter().filter(|f| f.error.is_some()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"patchbay test\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{seconds:.3}\">",
        tests + errors
    );
    for f in files {
        let file = escape(&f.file);
        let fails = f.cases.iter().filter(|c| !c.mismatches.is_empty()).count();
        let errs = usize::from(f.error.is_some());
        let _ = writeln!(
            out,
            "  <testsuite name=\"{file}\" tests=\"{}\" failures=\"{fails}\" errors=\"{errs}\">",
            f.cases.len() + errs
        );
        if let Some(e) = &f.error {
            let _ = writeln!(
                out,
                "    <testcase name=\"(test file)\" classname=\"{file}\">\n      <error message=\"the test file has errors\" type=\"invalid\">{}</error>\n    </testcase>",
                escape(e)
            );
        }
        for c in &f.cases {
            let _ = write!(
                out,
                "    <testcase name=\"{}\" classname=\"{file}\"",
                escape(&c.case)
            );
            match c.mismatches.first() {
                None => out.push_str("/>\n"),
                Some(first) => {
                    let mut text = String::new();
                    for m in &c.mismatches {
                        let _ = writeln!(text, "{}", m.message);
                        if let Some(d) = m.diff(false) {
                            text.push_str(&d);
                        }
                    }
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
                        escape(&first.message),
                        first.kind,
                        escape(&text)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_drops_control_characters() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>\u{1}"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
    }
}

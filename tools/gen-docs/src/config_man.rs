//! slurm-one.toml(5) from the documented example config (`etc/slurm-one.toml`): its
//! opening comment is the description, each `[table]` a subsection, each key (set, or
//! commented out as `#key = value`) an item showing its default, with the comment above
//! it as the text. A comment followed by a blank line is a paragraph of its own; comment
//! lines indented past `# ` are kept as written.

use clap_mangen::roff::{bold, italic, roman, Roff};

/// Renders the page.
pub fn render(example: &str, version: &str, date: &str) -> String {
    let mut roff = Roff::new();
    let source = format!("slurm-one {version}");
    roff.control("TH", ["slurm-one.toml", "5", date, &source, "slurm-one"]);
    roff.control("SH", ["NAME"]);
    roff.text([roman("slurm-one.toml - configuration of slurm-one")]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([bold("/etc/slurm-one/slurm-one.toml")]);
    roff.control("SH", ["DESCRIPTION"]);

    let mut pending: Vec<String> = Vec::new();
    let mut in_header = true;
    let mut lines = example.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            paragraphs(&mut roff, &pending);
            pending.clear();
            continue;
        }
        if let Some(table) = table_name(trimmed) {
            if in_header {
                in_header = false;
                paragraphs(&mut roff, &pending);
                pending.clear();
                roff.control("SH", ["SETTINGS"]);
            }
            let commented = trimmed.starts_with('#');
            let heading = if commented {
                format!("[{table}] (an example, commented out)")
            } else {
                format!("[{table}]")
            };
            roff.control("SS", [heading.as_str()]);
            paragraphs(&mut roff, &pending);
            pending.clear();
            continue;
        }
        if let Some((key, value)) = key_line(trimmed) {
            let mut value = value.to_string();
            let mut block = Vec::new();
            for quote in ["'''", "\"\"\""] {
                if value.starts_with(quote) {
                    let rest = value[3..].to_string();
                    if !rest.is_empty() {
                        block.push(rest);
                    }
                    for more in lines.by_ref() {
                        if more.trim_end() == quote {
                            break;
                        }
                        block.push(more.to_string());
                    }
                    value = format!("{quote}...{quote}");
                }
            }
            roff.control("TP", []);
            roff.text([bold(key), roman(" = "), italic(value)]);
            paragraphs(&mut roff, &pending);
            pending.clear();
            if !block.is_empty() {
                roff.control("IP", []);
                literal(&mut roff, &block);
            }
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            pending.push(text.strip_prefix(' ').unwrap_or(text).to_string());
        }
    }
    paragraphs(&mut roff, &pending);
    roff.control("SH", ["FILES"]);
    roff.control("TP", []);
    roff.text([bold("/usr/share/doc/slurm-one/examples/slurm-one.toml")]);
    roff.text([roman("this file as shipped, every key with its default")]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman("slurm-one(8), slurm.conf(5), spank(7)")]);
    roff.render()
}

/// `[name]` or `#[name]` (a table commented out).
fn table_name(line: &str) -> Option<&str> {
    let body = line.strip_prefix('#').unwrap_or(line);
    let name = body.strip_prefix('[')?.strip_suffix(']')?;
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        .then_some(name)
}

/// `key = value` or `#key = value` (commented out, no blank after `#`).
fn key_line(line: &str) -> Option<(&str, &str)> {
    let body = line.strip_prefix('#').unwrap_or(line);
    let (key, value) = body.split_once(" = ")?;
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
    .then_some((key, value.trim()))
}

/// Comment lines as paragraphs: blank comment lines separate them, lines starting with a
/// blank are kept as written.
fn paragraphs(roff: &mut Roff, lines: &[String]) {
    let mut first = true;
    for para in lines.split(|l| l.trim().is_empty()) {
        if para.is_empty() {
            continue;
        }
        if !first {
            roff.control("PP", []);
        }
        first = false;
        let mut prose = Vec::new();
        let mut kept = Vec::new();
        for l in para {
            if l.starts_with(' ') {
                kept.push(l.clone());
            } else {
                if !kept.is_empty() {
                    flush(roff, &mut prose);
                    literal(roff, &kept);
                    kept.clear();
                }
                prose.push(l.trim().to_string());
            }
        }
        flush(roff, &mut prose);
        if !kept.is_empty() {
            literal(roff, &kept);
        }
    }
}

fn flush(roff: &mut Roff, prose: &mut Vec<String>) {
    if !prose.is_empty() {
        roff.text([roman(prose.join(" "))]);
        prose.clear();
    }
}

fn literal(roff: &mut Roff, lines: &[String]) {
    roff.control("nf", []);
    for l in lines {
        roff.text([roman(l.as_str())]);
    }
    roff.control("fi", []);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys set or commented out in the example.
    fn example_keys() -> Vec<&'static str> {
        crate::EXAMPLE_CONFIG
            .lines()
            .filter_map(|l| key_line(l.trim_end()).map(|(k, _)| k))
            .collect()
    }

    #[test]
    fn every_key_of_the_example_config_is_an_item_of_the_page() {
        let page = render(crate::EXAMPLE_CONFIG, "0.1.0", "");
        let keys = example_keys();
        for key in [
            "endpoint",
            "auth_file",
            "database",
            "slurm_conf",
            "user_selectable",
            "body",
            "template_id",
            "cpu_share_max",
            "boot_timeout",
            "start_script",
            "orphan_grace",
            "file",
        ] {
            assert!(keys.contains(&key), "{key} not found in the example");
        }
        for key in keys {
            let item = format!(".TP\n\\fB{}\\fR = ", key);
            assert!(page.contains(&item), "{key}: {page}");
        }
        for table in [
            "opennebula",
            "cluster",
            "templates",
            "templates.small",
            "sizing",
            "provisioning",
            "logging",
        ] {
            assert!(page.contains(&format!(".SS [{table}]")), "{table}: {page}");
        }
    }

    #[test]
    fn comments_become_paragraphs_and_indented_lines_stay_as_written() {
        let page = render(
            "# Intro\n# more.\n\n[a]\n# Text of k,\n# two lines.\n#   kept  as is\nk = \"v\"\n\n# Alone.\n\n#[b.c]\n#x = 1\n",
            "1",
            "",
        );
        assert!(
            page.contains(".SH DESCRIPTION\nIntro more.\n.SH SETTINGS\n.SS [a]\n"),
            "{page}"
        );
        assert!(
            page.contains(
                ".TP\n\\fBk\\fR = \\fI\"v\"\\fR\nText of k, two lines.\n.nf\n  kept  as is\n.fi\n"
            ),
            "{page}"
        );
        assert!(
            page.contains("Alone.\n.SS \"[b.c] (an example, commented out)\"\n"),
            "{page}"
        );
    }
}

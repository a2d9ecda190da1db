//! spec/ is the source of truth for rule IDs: every ID cited in code or
//! features exists in spec/, and every rule in spec/ is traced to at least
//! one oracle function, model property or feature scenario, and cited.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Rule IDs in a text: `REG-1`, `PROTO-4`; not `DNS-1123` (a naming rule).
fn ids(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["REG", "EPS", "DNS", "RES", "PXY", "PROTO"] {
        let pat = format!("{prefix}-");
        let mut rest = text;
        while let Some(i) = rest.find(&pat) {
            let before = rest[..i].chars().last();
            let after = &rest[i + pat.len()..];
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            let boundary = before.is_none_or(|c| !c.is_ascii_alphanumeric());
            if boundary && (1..=3).contains(&digits.len()) {
                out.insert(format!("{prefix}-{digits}"));
            }
            rest = &after[digits.len()..];
        }
    }
    out
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && !p.ends_with("target") {
            files(&p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
}

/// Rules defined in spec/: lines of the form `- **ID** text`.
fn defined() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut specs = Vec::new();
    files(&root().join("spec"), "md", &mut specs);
    for f in specs {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            if let Some(rest) = line.strip_prefix("- **")
                && let Some((id, text)) = rest.split_once("**")
            {
                assert!(
                    out.insert(id.to_owned(), text.trim().to_owned()).is_none(),
                    "{id} defined twice"
                );
            }
        }
    }
    out
}

/// Rows of spec/traceability.md: ID → (oracle, property, feature).
fn table() -> BTreeMap<String, [String; 3]> {
    let text = std::fs::read_to_string(root().join("spec/traceability.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect();
        if cells.len() == 4 && ids(&cells[0]).len() == 1 {
            out.insert(
                cells[0].clone(),
                [cells[1].clone(), cells[2].clone(), cells[3].clone()],
            );
        }
    }
    out
}

fn cited() -> BTreeMap<String, Vec<PathBuf>> {
    let mut sources = Vec::new();
    for dir in ["model/src", "features", "impl", "harness/src"] {
        files(&root().join(dir), "rs", &mut sources);
        files(&root().join(dir), "feature", &mut sources);
    }
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in sources {
        for id in ids(&std::fs::read_to_string(&f).unwrap()) {
            out.entry(id).or_default().push(f.clone());
        }
    }
    out
}

#[test]
fn every_cited_rule_exists_in_spec() {
    let defined = defined();
    assert!(defined.len() >= 50, "spec/ defines {} rules", defined.len());
    for (id, where_) in cited() {
        assert!(
            defined.contains_key(&id),
            "{id} is cited in {where_:?} but not defined in spec/"
        );
    }
}

#[test]
fn every_rule_is_traced_and_cited() {
    let defined = defined();
    let table = table();
    let cited = cited();
    for id in defined.keys() {
        let row = table
            .get(id)
            .unwrap_or_else(|| panic!("{id} has no row in spec/traceability.md"));
        assert!(
            row.iter().any(|c| !c.is_empty() && c != "—"),
            "{id}: no oracle function, property or feature"
        );
        assert!(
            cited.contains_key(id),
            "{id} is defined in spec/ but cited nowhere in code or features"
        );
    }
    for id in table.keys() {
        assert!(
            defined.contains_key(id),
            "traceability row {id} is not a rule"
        );
    }
    // Properties named in the table exist in the model.
    for row in table.values() {
        for name in row[1]
            .split(';')
            .map(str::trim)
            .filter(|n| !n.is_empty() && *n != "—")
        {
            assert!(
                signpost_model::protocol::PROPERTIES
                    .iter()
                    .any(|p| p.starts_with(name.trim_matches('`'))),
                "traceability names unknown property {name}"
            );
        }
    }
}

#[test]
fn id_scanner_skips_naming_rules() {
    assert_eq!(
        ids("DNS-1123 label, DNS-1035; see DNS-12 and PROTO-4."),
        BTreeSet::from(["DNS-12".to_owned(), "PROTO-4".to_owned()])
    );
}

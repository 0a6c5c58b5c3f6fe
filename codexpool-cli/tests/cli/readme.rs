//! The README's command table against `--help`: every command has a row, and every flag a
//! command takes is in its row.

use crate::support::{Env, texts};

/// The names listed in the `Commands:` section of a help text (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|name| name != "help")
        .collect()
}

/// The flags in the `Options:` section of a help text, each with its short form when it has
/// one (not the global ones, nor --help/--version).
fn flags(help: &str) -> Vec<Vec<String>> {
    help.lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .take_while(|l| !l.starts_with("Global options:"))
        // Option lines start within six columns; deeper ones are descriptions (a value list).
        .filter(|l| l.trim_start().starts_with('-') && l.len() - l.trim_start().len() <= 6)
        .map(|l| {
            l.split_whitespace()
                .map(|w| w.trim_end_matches(','))
                .take_while(|w| w.starts_with('-'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|names| !names.iter().any(|n| n == "--help" || n == "--version"))
        .collect()
}

/// Each row's first cell, with `\|` alternations spelt out: `account enable\|disable <ID>`
/// becomes `account enable <ID>` and `account disable <ID>`.
fn readme_rows() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let table = readme
        .split("| command | does |")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    let mut rows = Vec::new();
    for line in table.lines().skip(2) {
        let cell = line.trim_start_matches('|').split(" | ").next().unwrap();
        for span in cell.split('`').skip(1).step_by(2) {
            let words: Vec<&str> = span.split(' ').collect();
            // The alternation is in the verb: the first or second word.
            let at = words
                .iter()
                .position(|w| w.contains("\\|"))
                .filter(|&i| i <= 1);
            match at {
                Some(i) => {
                    for verb in words[i].split("\\|") {
                        let mut w = words.clone();
                        w[i] = verb;
                        rows.push(w.join(" "));
                    }
                }
                None => rows.push(span.to_string()),
            }
        }
    }
    rows
}

#[test]
fn the_readme_names_every_command_and_flag() {
    let env = Env::new();
    let help = |path: &[&str]| {
        let o = env.cmd().args(path).arg("--help").output().unwrap();
        assert!(o.status.success(), "{path:?}");
        texts(&o).0
    };
    let rows = readme_rows();
    let mut commands: Vec<Vec<String>> = Vec::new();
    for top in subcommands(&help(&[])) {
        let subs = subcommands(&help(&[top.as_str()]));
        if subs.is_empty() {
            commands.push(vec![top]);
        } else {
            commands.extend(subs.into_iter().map(|s| vec![top.clone(), s]));
        }
    }
    assert!(commands.len() > 15, "{commands:?}");
    for path in commands {
        let name = path.join(" ");
        let row = rows
            .iter()
            .find(|r| *r == &name || r.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no README row for `{name}`: {rows:#?}"));
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        for names in flags(&help(&path)) {
            assert!(
                row.split([' ', '[', ']', '…'])
                    .any(|w| names.iter().any(|n| n == w)),
                "`{name}` takes {names:?}, but its README row does not say so: {row}"
            );
        }
    }
}

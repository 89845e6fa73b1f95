//! Commands that are split into words rather than read by a shell: a plain
//! `run` executed directly, and a plugin setting that grants a command (the
//! host splits it with `shell_words`, the grammar of POSIX quotes without
//! expansions).

use std::path::Path;

use crate::lang::interp::{Part, Reference, Template};
use crate::plugin::contract::FieldInfo;
use crate::plugin::grants::FieldKind;
use crate::run::RenderError;

/// A plugin call's settings, rendered. A setting that holds a command is
/// split into words by the host (it grants running exactly that command), so
/// each value in it stays inside its word, whatever its bytes.
pub fn settings(
    config: &[(String, Template)],
    fields: &[FieldInfo],
    resolve: &dyn Fn(&Reference) -> Result<String, RenderError>,
) -> Result<Vec<(String, String)>, RenderError> {
    config
        .iter()
        .map(|(key, t)| {
            let command = fields.iter().any(|f| f.name == *key && f.kind == FieldKind::Command);
            let value = if command { render_words(t, resolve)? } else { t.render(resolve)? };
            Ok((key.clone(), value))
        })
        .collect()
}

/// `template` rendered for `shell_words::split`: each value stays inside
/// the word it stands in, whatever its bytes, quoted for the quotes around it.
pub fn render_words(
    template: &Template,
    resolve: &dyn Fn(&Reference) -> Result<String, RenderError>,
) -> Result<String, RenderError> {
    let mut quotes = Quotes::Between;
    let mut out = String::new();
    for part in &template.parts {
        match part {
            Part::Lit(lit) => {
                lit.chars().for_each(|c| quotes = quotes.next(c));
                out.push_str(lit);
            }
            Part::Ref(r) => {
                let value = resolve(r)?;
                match quotes {
                    Quotes::Between | Quotes::Outside => {
                        out.push_str(&shell_words::quote(&value));
                        quotes = Quotes::Outside;
                    }
                    Quotes::Single => {
                        out.push('\'');
                        out.push_str(&shell_words::quote(&value));
                        out.push('\'');
                    }
                    Quotes::Double => {
                        for c in value.chars() {
                            if matches!(c, '\\' | '"' | '$' | '`') {
                                out.push('\\');
                            }
                            out.push(c);
                        }
                    }
                    Quotes::Escaped | Quotes::DoubleEscaped | Quotes::Comment => {
                        return Err(RenderError {
                            reference: r.text.clone(),
                            reason: "a value cannot follow a backslash or stand in a comment of a command".into(),
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Where `shell_words::split` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quotes {
    /// Between words, where `#` starts a comment.
    Between,
    /// In a word, unquoted.
    Outside,
    Escaped,
    Single,
    Double,
    DoubleEscaped,
    Comment,
}

impl Quotes {
    fn next(self, c: char) -> Quotes {
        match (self, c) {
            (Quotes::Between | Quotes::Outside, ' ' | '\t' | '\n') => Quotes::Between,
            (Quotes::Between, '#') => Quotes::Comment,
            (Quotes::Between, c) => Quotes::Outside.next(c),
            (Quotes::Outside, '\\') => Quotes::Escaped,
            (Quotes::Outside, '\'') => Quotes::Single,
            (Quotes::Outside, '"') => Quotes::Double,
            (Quotes::Escaped, _) => Quotes::Outside,
            (Quotes::Single, '\'') => Quotes::Outside,
            (Quotes::Double, '\\') => Quotes::DoubleEscaped,
            (Quotes::Double, '"') => Quotes::Outside,
            (Quotes::DoubleEscaped, _) => Quotes::Double,
            (Quotes::Comment, '\n') => Quotes::Between,
            (state, _) => state,
        }
    }
}

/// Shells that expand `"${VAR}"` as POSIX says, by the program's file name.
pub fn is_posix_shell(program: &str) -> bool {
    let name = Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or(program);
    matches!(name, "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" | "busybox")
}

/// Words that only a shell understands, at the start of a command.
const SHELL_WORDS: &[&str] = &[
    ".", ":", "alias", "break", "case", "cd", "command", "continue", "eval", "exec", "exit", "export", "for",
    "function", "if", "read", "readonly", "return", "set", "shift", "source", "trap", "ulimit", "umask", "unset",
    "until", "wait", "while",
];

/// `sh -c script`, or the program itself when the script is a plain command.
/// Like make, a command without shell syntax is run directly: one exec, not two.
pub fn command_line(script: &str, shell: Option<&[String]>) -> (String, Vec<String>) {
    if let Some(shell) = shell {
        let mut args: Vec<String> = shell[1..].to_vec();
        args.extend(["-c".to_string(), script.to_string()]);
        return (shell[0].clone(), args);
    }
    let plain = !script.contains(|c: char| "#;\"'*?[]&|<>(){}$`^~!\\\n=%".contains(c));
    if plain
        && let Ok(mut words) = shell_words::split(script)
        && !words.is_empty()
        && !SHELL_WORDS.contains(&words[0].as_str())
    {
        let program = words.remove(0);
        return (program, words);
    }
    ("sh".into(), vec!["-c".into(), script.to_string()])
}

#[cfg(test)]
mod tests {
    use super::super::tests::template;
    use super::*;

    #[test]
    fn plain_commands_skip_the_shell() {
        assert_eq!(command_line("true", None), ("true".into(), vec![]));
        assert_eq!(command_line("cargo build  --release", None).1, vec!["build", "--release"]);
        assert_eq!(command_line("echo $HOME", None).0, "sh");
        assert_eq!(command_line("cd x", None).0, "sh");
        assert_eq!(command_line("a && b", None).0, "sh");
        let bash = ["bash".to_string(), "-e".to_string()];
        assert_eq!(command_line("x", Some(&bash)), ("bash".into(), vec!["-e".into(), "-c".into(), "x".into()]));
    }

    /// A hostile value stays in its word, wherever it stands: unquoted, in
    /// single quotes, in double quotes, glued to other text.
    #[test]
    fn a_value_stays_in_its_word_in_every_quote() {
        let hostile = ["x y", "a' b", "a\" b", "\\", "$(id) `id`", "", "# c", "l1\nl2", "'\"'\"'"];
        for (text, words) in [
            ("curl ${env.X} -f", vec!["curl", "{}", "-f"]),
            ("curl 'u=${env.X}' -f", vec!["curl", "u={}", "-f"]),
            ("curl \"u=${env.X}!\" -f", vec!["curl", "u={}!", "-f"]),
            ("curl --u=${env.X}x -f", vec!["curl", "--u={}x", "-f"]),
        ] {
            for value in hostile {
                let got = render_words(&template(text), &|_| Ok(value.to_string())).expect("render");
                let split = shell_words::split(&got).unwrap_or_else(|e| panic!("{text} with {value:?}: {e} in {got}"));
                let want: Vec<String> = words.iter().map(|w| w.replace("{}", value)).collect();
                assert_eq!(split, want, "{text} with {value:?}");
            }
        }
    }

    #[test]
    fn a_value_after_a_backslash_is_refused() {
        assert!(render_words(&template("curl \\${env.X}"), &|_| Ok("v".into())).is_err());
    }
}

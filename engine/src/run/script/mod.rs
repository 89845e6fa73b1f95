//! A command's `${…}` values passed as data, never as shell code.
//!
//! A value (a step output, `${git.branch}`, a secret, a matrix value) may hold
//! any bytes: `;`, `$(…)`, quotes, newlines. Spliced into the text of a shell
//! script it would become code. Instead every reference becomes an
//! environment variable of the command (`PIPE_VALUE_1`, …) and the script
//! expands that variable, quoted for where the reference stands:
//!
//! | the reference stands | it becomes |
//! | --- | --- |
//! | unquoted: `echo ${x}` | `echo "${PIPE_VALUE_1}"` — one word, never split or globbed |
//! | in double quotes: `"v=${x}"` | `"v=${PIPE_VALUE_1}"` |
//! | in single quotes: `'v=${x}'` | `'v='"${PIPE_VALUE_1}"''` |
//! | in a here-document: `<<EOF` … `${x}` | `${PIPE_VALUE_1}` |
//!
//! A shell expands a variable's value once and never parses it again, so the
//! bytes arrive as they are. Secrets thereby stay out of `argv` (readable by
//! every local user in `/proc/PID/cmdline`): only the variable's name is there.
//! A quoted here-document (`<<'EOF'`) expands nothing, so a reference in one is
//! refused rather than spliced in.

use super::RenderError;
use crate::lang::interp::{Part, Reference, Template};

mod lexer;
mod words;
use lexer::{Context, Lexer};
pub use words::{command_line, is_posix_shell, settings};

/// The prefix of the variables that carry values into a script.
pub const VALUE_VAR: &str = "PIPE_VALUE_";

/// A script ready for `sh -c`, and the variables its values travel in.
#[derive(Debug, Default)]
pub struct Script {
    pub text: String,
    pub vars: Vec<(String, String)>,
}

/// One template written as shell text.
#[derive(Debug, Default)]
pub struct Written {
    /// What the shell runs: references expand variables.
    pub text: String,
    /// The values in place, for people (the log masks it).
    pub shown: String,
}

/// Renders one or more templates (an instance's start, stop and status
/// commands share one set of variables) into scripts.
#[derive(Debug, Default)]
pub struct ScriptWriter {
    vars: Vec<(String, String)>,
}

impl ScriptWriter {
    /// `template` as shell text whose references expand variables holding
    /// what `resolve` answers.
    pub fn write(
        &mut self,
        template: &Template,
        mut resolve: impl FnMut(&Reference) -> Result<String, RenderError>,
    ) -> Result<Written, RenderError> {
        let mut lexer = Lexer::default();
        let (mut text, mut shown) = (String::new(), String::new());
        for part in &template.parts {
            match part {
                Part::Lit(lit) => {
                    lexer.feed(lit);
                    text.push_str(lit);
                    shown.push_str(lit);
                }
                Part::Ref(r) => {
                    let value = resolve(r)?;
                    shown.push_str(&value);
                    let name = self.var(value);
                    let expansion = match lexer.context() {
                        Context::Unquoted => format!("\"${{{name}}}\""),
                        Context::Double | Context::HereDoc => format!("${{{name}}}"),
                        Context::Single => format!("'\"${{{name}}}\"'"),
                        Context::AnsiSingle => format!("'\"${{{name}}}\"$'"),
                        refused => return Err(refusal(r, refused)),
                    };
                    lexer.feed_opaque();
                    text.push_str(&expansion);
                }
            }
        }
        Ok(Written { text, shown })
    }

    /// The variables written so far.
    pub fn into_vars(self) -> Vec<(String, String)> {
        self.vars
    }

    /// One template as a whole script.
    pub fn script(
        template: &Template,
        resolve: impl FnMut(&Reference) -> Result<String, RenderError>,
    ) -> Result<Script, RenderError> {
        let mut writer = ScriptWriter::default();
        let text = writer.write(template, resolve)?.text;
        Ok(Script { text, vars: writer.vars })
    }

    /// The variable holding `value`: one per distinct value.
    fn var(&mut self, value: String) -> String {
        if let Some((name, _)) = self.vars.iter().find(|(_, v)| *v == value) {
            return name.clone();
        }
        let name = format!("{VALUE_VAR}{}", self.vars.len() + 1);
        self.vars.push((name.clone(), value));
        name
    }
}

/// Why a reference cannot be passed as data where it stands.
fn refusal(r: &Reference, context: Context) -> RenderError {
    let reason = match context {
        Context::QuotedHereDoc => {
            "a quoted here-document (<<'EOF') expands nothing, so the value cannot reach it as data; \
             write the delimiter unquoted (<<EOF)"
        }
        Context::Backquotes => {
            "inside backquotes quoting follows other rules, so the value cannot be passed safely; write $( … )"
        }
        _ => {
            "pipe cannot tell how this part of the script is quoted (after a `<<` inside parentheses), so \
             the value cannot be passed safely; set it in the step's `env { }` and use the variable"
        }
    };
    RenderError { reference: r.text.clone(), reason: reason.into() }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::lang::error::Errors;
    use crate::lang::source::{Loc, Source};

    /// `text` parsed as a template, as the parser would.
    pub(in crate::run::script) fn template(text: &str) -> Template {
        let src = Source::new("t.kdl", "t.kdl", text);
        let loc = Loc::new(&src, (0, text.len()).into());
        let mut errs = Errors::default();
        let t = Template::parse(text, &loc, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        t
    }

    fn script(text: &str) -> Result<String, RenderError> {
        ScriptWriter::script(&template(text), |_| Ok("v".to_string())).map(|s| s.text)
    }

    #[test]
    fn each_reference_is_expanded_quoted_for_where_it_stands() {
        let v = "${PIPE_VALUE_1}";
        for (input, want) in [
            ("echo ${env.X}", format!("echo \"{v}\"")),
            ("echo \"a ${env.X} b\"", format!("echo \"a {v} b\"")),
            ("echo 'a ${env.X} b'", format!("echo 'a '\"{v}\"' b'")),
            ("echo $'a\\' ${env.X}'", format!("echo $'a\\' '\"{v}\"$''")),
            ("echo \"$(echo ${env.X})\"", format!("echo \"$(echo \"{v}\")\"")),
            ("echo it\\'s ${env.X}", format!("echo it\\'s \"{v}\"")),
            ("# it's\necho ${env.X}", format!("# it's\necho \"{v}\"")),
            ("echo a#b'${env.X}'", format!("echo a#b''\"{v}\"''")),
            ("cat <<EOF\nit's ${env.X}\nEOF\necho ${env.X}", format!("cat <<EOF\nit's {v}\nEOF\necho \"{v}\"")),
            ("cat <<-EOF\n\tit's\n\tEOF\necho '${env.X}'", format!("cat <<-EOF\n\tit's\n\tEOF\necho ''\"{v}\"''")),
            ("cat <<< 'x'; echo ${env.X}", format!("cat <<< 'x'; echo \"{v}\"")),
            ("(cd a && echo ${env.X})", format!("(cd a && echo \"{v}\")")),
            // Attacks on the lexer itself: each once made pipe expand a value unquoted.
            ("echo \"$((1 << 2))\"; find . -name ${env.X}", format!("echo \"$((1 << 2))\"; find . -name \"{v}\"")),
            ("x=$((1<<2)); echo ${env.X}", format!("x=$((1<<2)); echo \"{v}\"")),
            ("r=\"$(case a in a) echo ${env.X};; esac)\"", format!("r=\"$(case a in a) echo \"{v}\";; esac)\"")),
            ("r=$(case a in (a) echo ${env.X};; esac)", format!("r=$(case a in (a) echo \"{v}\";; esac)")),
            ("cat <<EOF\n$(echo ${env.X})\nEOF", format!("cat <<EOF\n$(echo \"{v}\")\nEOF")),
            ("echo \\ #\"${env.X}\"", format!("echo \\ #\"{v}\"")),
            ("cat <<EOF\nx\\\nEOF\n${env.X}\nEOF", format!("cat <<EOF\nx\\\nEOF\n{v}\nEOF")),
            ("cat <<EOF\n${env.X}\nEOF\n'${env.X}'", format!("cat <<EOF\n{v}\nEOF\n''\"{v}\"''")),
        ] {
            assert_eq!(script(input).map_err(|e| e.reason).as_deref(), Ok(want.as_str()), "{input}");
        }
    }

    #[test]
    fn a_quoted_here_document_refuses_references() {
        let err = script("cat <<'EOF'\n${env.X}\nEOF").expect_err("refused");
        assert!(err.reason.contains("here-document"), "{}", err.reason);
        assert!(script("cat <<'EOF'\nx\nEOF\necho ${env.X}").is_ok());
    }

    #[test]
    fn where_the_quoting_is_unclear_a_reference_is_refused() {
        for (input, why) in [
            ("echo `echo ${env.X}`", "backquotes"),
            ("cat <<EOF\n`echo ${env.X}`\nEOF", "backquotes"),
            ("(cat <<EOF\nx\nEOF\n) ; echo ${env.X}", "cannot tell"),
        ] {
            let err = script(input).expect_err(input);
            assert!(err.reason.contains(why), "{input}: {}", err.reason);
        }
    }

    #[test]
    fn one_variable_per_distinct_value() {
        let mut n = 0;
        let s = ScriptWriter::script(&template("${env.A} ${env.B} ${env.A}"), |r| {
            n += 1;
            Ok(if r.text.contains(".A") { "a".to_string() } else { "b".to_string() })
        })
        .expect("script");
        assert_eq!(s.vars, vec![("PIPE_VALUE_1".into(), "a".into()), ("PIPE_VALUE_2".into(), "b".into())]);
        assert_eq!(n, 3);
    }

    /// The values of THREATS.md, through a real `sh`: each arrives as one
    /// word, byte for byte, and nothing runs.
    #[test]
    fn hostile_values_arrive_as_data_through_a_real_shell() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hostile = [
            "x; touch pwned",
            "$(touch pwned)",
            "`touch pwned`",
            "'; touch pwned; '",
            "\"; touch pwned; \"",
            "a\nEOF\ntouch pwned",
            "* ?",
            "-n",
            "\u{1b}[32m✓",
        ];
        for scr in [
            "printf '%s|' ${env.X}",
            "printf '%s|' \"${env.X}\"",
            "printf '%s|' '${env.X}'",
            "printf '%s|' \"$(printf '%s' ${env.X})\"",
            "cat <<EOF\n${env.X}|\nEOF",
            ": \"$((1 << 2))\"; printf '%s|' ${env.X}",
            "r=\"$(case a in a) printf '%s|' ${env.X};; esac)\"; printf '%s' \"$r\"",
            "cat <<EOF\n$(printf '%s' ${env.X})|\nEOF",
            ": \\ #; printf '%s|' \"${env.X}\"",
        ] {
            for value in hostile {
                let s = ScriptWriter::script(&template(scr), |_| Ok(value.to_string())).expect("script");
                let out = std::process::Command::new("sh")
                    .args(["-c", &s.text])
                    .envs(s.vars.iter().map(|(k, v)| (k, v)))
                    .current_dir(dir.path())
                    .output()
                    .expect("sh");
                let got = String::from_utf8_lossy(&out.stdout);
                assert_eq!(got.trim_end_matches('\n'), format!("{value}|"), "{scr} with {value:?}");
                assert!(!dir.path().join("pwned").exists(), "{scr} with {value:?} ran code");
            }
        }
    }
}

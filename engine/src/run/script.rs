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
                        Context::QuotedHereDoc => {
                            return Err(RenderError {
                                reference: r.text.clone(),
                                reason: "a quoted here-document (<<'EOF') expands nothing, so the value cannot \
                                         reach it as data; write the delimiter unquoted (<<EOF)"
                                    .into(),
                            });
                        }
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

/// Where in shell syntax a reference stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    Unquoted,
    Double,
    Single,
    /// bash's `$'…'`.
    AnsiSingle,
    HereDoc,
    QuotedHereDoc,
}

/// One level of nesting: the script, a `$( … )` or a `` ` … ` `` inside it.
#[derive(Clone, Debug)]
enum Frame {
    Plain { parens: usize },
    Backtick,
    Double,
    Single,
    AnsiSingle,
    Comment,
}

/// Just enough of POSIX shell's lexical rules to know which quotes a point of
/// the script is in: quotes, backslashes, comments, `$( )`, backquotes and
/// here-documents. What it cannot follow errs towards a double-quoted
/// expansion, which is data in every context but a quoted here-document.
#[derive(Debug)]
struct Lexer {
    stack: Vec<Frame>,
    escaped: bool,
    /// The previous character, for `$(`, `$'`, `<<` and word starts.
    prev: char,
    prev2: char,
    /// Here-documents announced on the current line: (delimiter, quoted, strip tabs).
    pending: Vec<(String, bool, bool)>,
    /// Reading a here-document's delimiter word after `<<`.
    delimiter: Option<(String, bool, bool)>,
    /// Inside a here-document's body: its delimiter, whether quoted, whether `<<-`.
    body: Option<(String, bool, bool)>,
    /// The current line of a here-document's body, to find its end.
    line: String,
    /// A reference was expanded on the current body line: it is not the delimiter.
    line_dirty: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer {
            stack: vec![Frame::Plain { parens: 0 }],
            escaped: false,
            prev: ' ',
            prev2: ' ',
            pending: Vec::new(),
            delimiter: None,
            body: None,
            line: String::new(),
            line_dirty: false,
        }
    }
}

impl Lexer {
    fn context(&self) -> Context {
        if let Some((_, quoted, _)) = &self.body {
            return if *quoted { Context::QuotedHereDoc } else { Context::HereDoc };
        }
        match self.stack.last() {
            Some(Frame::Double) => Context::Double,
            Some(Frame::Single) => Context::Single,
            Some(Frame::AnsiSingle) => Context::AnsiSingle,
            _ => Context::Unquoted,
        }
    }

    /// A value was expanded here: it is a word's part, never syntax.
    fn feed_opaque(&mut self) {
        if self.body.is_some() {
            self.line_dirty = true;
        } else if let Some(d) = &mut self.delimiter {
            d.0.push('\u{1}');
        }
        self.escaped = false;
        self.prev2 = self.prev;
        self.prev = 'x';
    }

    fn feed(&mut self, text: &str) {
        for c in text.chars() {
            self.step(c);
            self.prev2 = self.prev;
            self.prev = c;
        }
    }

    fn step(&mut self, c: char) {
        if self.body.is_some() {
            return self.body_char(c);
        }
        if self.delimiter.is_some() && self.delimiter_char(c) {
            return;
        }
        if self.escaped {
            self.escaped = false;
            return;
        }
        let top = self.stack.last().cloned().unwrap_or(Frame::Plain { parens: 0 });
        match top {
            Frame::Single => {
                if c == '\'' {
                    self.stack.pop();
                }
            }
            Frame::AnsiSingle => match c {
                '\\' => self.escaped = true,
                '\'' => {
                    self.stack.pop();
                }
                _ => {}
            },
            Frame::Comment => {
                if c == '\n' {
                    self.stack.pop();
                    self.newline();
                }
            }
            Frame::Double => match c {
                '\\' => self.escaped = true,
                '"' => {
                    self.stack.pop();
                }
                '`' => self.stack.push(Frame::Backtick),
                '(' if self.prev == '$' => self.stack.push(Frame::Plain { parens: 0 }),
                _ => {}
            },
            Frame::Plain { .. } | Frame::Backtick => self.plain_char(c, matches!(top, Frame::Backtick)),
        }
    }

    fn plain_char(&mut self, c: char, in_backtick: bool) {
        match c {
            '\\' => self.escaped = true,
            '\'' if self.prev == '$' => self.stack.push(Frame::AnsiSingle),
            '\'' => self.stack.push(Frame::Single),
            '"' => self.stack.push(Frame::Double),
            '`' if in_backtick => {
                self.stack.pop();
            }
            '`' => self.stack.push(Frame::Backtick),
            '#' if self.prev.is_whitespace() || ";&|()".contains(self.prev) => self.stack.push(Frame::Comment),
            '(' if self.prev == '$' => self.stack.push(Frame::Plain { parens: 0 }),
            '(' => {
                if let Some(Frame::Plain { parens }) = self.stack.last_mut() {
                    *parens += 1;
                }
            }
            ')' => {
                let depth = self.stack.len();
                match self.stack.last_mut() {
                    Some(Frame::Plain { parens }) if *parens > 0 => *parens -= 1,
                    Some(Frame::Plain { .. }) if depth > 1 => {
                        self.stack.pop();
                    }
                    _ => {}
                }
            }
            '<' if self.prev == '<' && self.prev2 != '<' => self.delimiter = Some((String::new(), false, false)),
            '\n' => self.newline(),
            _ => {}
        }
    }

    /// After `<<`: `-`, blanks, then the delimiter word, quoted or not.
    /// Returns whether `c` was taken as part of it.
    fn delimiter_char(&mut self, c: char) -> bool {
        let Some((word, quoted, strip)) = &mut self.delimiter else { return false };
        match c {
            '<' if word.is_empty() => {
                // `<<<` is a here-string, not a here-document.
                self.delimiter = None;
                return true;
            }
            '-' if word.is_empty() && !*strip => *strip = true,
            ' ' | '\t' if word.is_empty() => {}
            '\'' | '"' | '\\' => *quoted = true,
            c if c.is_whitespace() || ";&|<>()".contains(c) => {
                let done = self.delimiter.take();
                if let Some((word, quoted, strip)) = done
                    && !word.is_empty()
                {
                    self.pending.push((word, quoted, strip));
                }
                return false;
            }
            c => word.push(c),
        }
        true
    }

    fn newline(&mut self) {
        if !self.pending.is_empty() {
            self.body = Some(self.pending.remove(0));
            self.line.clear();
            self.line_dirty = false;
        }
    }

    fn body_char(&mut self, c: char) {
        if c != '\n' {
            self.line.push(c);
            return;
        }
        let Some((delimiter, _, strip)) = &self.body else { return };
        let line = if *strip { self.line.trim_start_matches('\t') } else { self.line.as_str() };
        if !self.line_dirty && line == delimiter {
            self.body = None;
            self.newline();
        }
        self.line.clear();
        self.line_dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::error::Errors;
    use crate::lang::source::{Loc, Source};

    fn template(text: &str) -> Template {
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
            ("echo `echo ${env.X}`", format!("echo `echo \"{v}\"`")),
            ("echo it\\'s ${env.X}", format!("echo it\\'s \"{v}\"")),
            ("# it's\necho ${env.X}", format!("# it's\necho \"{v}\"")),
            ("echo a#b'${env.X}'", format!("echo a#b''\"{v}\"''")),
            ("cat <<EOF\nit's ${env.X}\nEOF\necho ${env.X}", format!("cat <<EOF\nit's {v}\nEOF\necho \"{v}\"")),
            ("cat <<-EOF\n\tit's\n\tEOF\necho '${env.X}'", format!("cat <<-EOF\n\tit's\n\tEOF\necho ''\"{v}\"''")),
            ("cat <<< 'x'; echo ${env.X}", format!("cat <<< 'x'; echo \"{v}\"")),
            ("(cd a && echo ${env.X})", format!("(cd a && echo \"{v}\")")),
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

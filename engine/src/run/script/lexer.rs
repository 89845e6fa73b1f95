//! Just enough of POSIX shell's lexical rules to know which quotes a point of
//! a script is in: quotes, backslashes, comments, `$( )` (with `case`
//! patterns inside), backquotes and here-documents (with `$( )` and
//! backslash-newline in their bodies).
//!
//! Where it cannot be sure, it says so ([`Context::Unsure`]) and the writer
//! refuses the reference instead of guessing: a wrong guess would expand a
//! value unquoted, where it splits into words.

/// Where in shell syntax a point of the script stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    Unquoted,
    Double,
    Single,
    /// bash's `$'…'`.
    AnsiSingle,
    /// The body of a here-document whose delimiter is unquoted.
    HereDoc,
    /// The body of `<<'EOF'`: nothing expands.
    QuotedHereDoc,
    /// Inside backquotes, whose quoting rules differ by what encloses them.
    Backquotes,
    /// Past something it cannot follow (a `<<` inside parentheses: a shift
    /// or a here-document?); it no longer knows.
    Unsure,
}

/// One level of nesting.
#[derive(Clone, Debug)]
enum Frame {
    /// The script, or a `$( … )`: open parentheses and `case`s in it.
    Plain {
        parens: usize,
        cases: usize,
    },
    Backtick,
    Double,
    Single,
    AnsiSingle,
    Comment,
}

/// A here-document: its delimiter, whether quoted, whether `<<-` (tabs stripped).
#[derive(Clone, Debug, Default)]
struct HereDoc {
    delimiter: String,
    quoted: bool,
    strip: bool,
}

#[derive(Debug)]
pub struct Lexer {
    stack: Vec<Frame>,
    escaped: bool,
    /// The previous character and the one before, for `$(`, `$'`, `<<` and word starts.
    prev: char,
    prev2: char,
    /// The word being read in plain context, and whether it stands where a command starts.
    word: String,
    command_start: bool,
    /// Here-documents announced on the current line.
    pending: Vec<HereDoc>,
    /// Reading a here-document's delimiter word after `<<`.
    delimiter: Option<HereDoc>,
    /// Inside a here-document's body, and the stack depth it was entered at
    /// (deeper: inside a `$( )` of the body).
    body: Option<(HereDoc, usize)>,
    body_escaped: bool,
    /// The current line of a body, to find its end; whether a value was expanded on it.
    line: String,
    line_dirty: bool,
    unsure: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer {
            stack: vec![Frame::Plain { parens: 0, cases: 0 }],
            escaped: false,
            prev: '\n',
            prev2: '\n',
            word: String::new(),
            command_start: true,
            pending: Vec::new(),
            delimiter: None,
            body: None,
            body_escaped: false,
            line: String::new(),
            line_dirty: false,
            unsure: false,
        }
    }
}

/// Words after which a command may start again.
const KEYWORDS: &[&str] = &["then", "do", "else", "elif", "if", "while", "until", "!", "{", "time"];

impl Lexer {
    pub fn context(&self) -> Context {
        if self.unsure {
            return Context::Unsure;
        }
        if let Some((doc, base)) = &self.body
            && self.stack.len() <= *base
        {
            return if doc.quoted { Context::QuotedHereDoc } else { Context::HereDoc };
        }
        if self.stack.iter().any(|f| matches!(f, Frame::Backtick)) {
            return Context::Backquotes;
        }
        match self.stack.last() {
            Some(Frame::Double) => Context::Double,
            Some(Frame::Single) => Context::Single,
            Some(Frame::AnsiSingle) => Context::AnsiSingle,
            _ => Context::Unquoted,
        }
    }

    /// A value was expanded here: it is part of a word, never syntax.
    pub fn feed_opaque(&mut self) {
        if self.in_body() {
            self.line_dirty = true;
        } else if let Some(d) = &mut self.delimiter {
            d.delimiter.push('\u{1}');
        } else {
            self.word.push('\u{1}');
        }
        self.escaped = false;
        self.prev2 = self.prev;
        self.prev = 'x';
    }

    pub fn feed(&mut self, text: &str) {
        for c in text.chars() {
            // An escaped character is a word's, never syntax (`\ #` is no comment).
            let literal = self.escaped || self.body_escaped;
            self.step(c);
            self.prev2 = self.prev;
            self.prev = if literal { 'x' } else { c };
        }
    }

    fn in_body(&self) -> bool {
        self.body.as_ref().is_some_and(|(_, base)| self.stack.len() <= *base)
    }

    fn step(&mut self, c: char) {
        if self.in_body() {
            return self.body_char(c);
        }
        if self.delimiter.is_some() && self.delimiter_char(c) {
            return;
        }
        if self.escaped {
            self.escaped = false;
            if c != '\n' {
                self.word.push(c);
            }
            return;
        }
        let top = self.stack.last().cloned().unwrap_or(Frame::Plain { parens: 0, cases: 0 });
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
                '(' if self.prev == '$' => self.open_substitution(),
                _ => {}
            },
            Frame::Plain { .. } | Frame::Backtick => self.plain_char(c, matches!(top, Frame::Backtick)),
        }
    }

    fn open_substitution(&mut self) {
        self.stack.push(Frame::Plain { parens: 0, cases: 0 });
        self.word.clear();
        self.command_start = true;
    }

    fn plain_char(&mut self, c: char, in_backtick: bool) {
        if c.is_alphanumeric() || c == '_' || c == '!' || c == '{' {
            self.word.push(c);
            return;
        }
        self.end_word();
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
            '(' if self.prev == '$' => self.open_substitution(),
            '(' => {
                if let Some(Frame::Plain { parens, .. }) = self.stack.last_mut() {
                    *parens += 1;
                }
                self.command_start = true;
            }
            ')' => {
                let depth = self.stack.len();
                match self.stack.last_mut() {
                    Some(Frame::Plain { parens, .. }) if *parens > 0 => *parens -= 1,
                    // A `case` pattern's end, not the substitution's.
                    Some(Frame::Plain { cases, .. }) if *cases > 0 => self.command_start = true,
                    Some(Frame::Plain { .. }) if depth > 1 => {
                        self.stack.pop();
                    }
                    _ => {}
                }
            }
            '<' if self.prev == '<' && self.prev2 != '<' => self.delimiter = Some(HereDoc::default()),
            ';' | '&' | '|' => self.command_start = true,
            '\n' => {
                self.command_start = true;
                self.newline();
            }
            _ => {}
        }
    }

    /// A word ended: `case` and `esac` at a command's start open and close patterns.
    fn end_word(&mut self) {
        if self.word.is_empty() {
            return;
        }
        let word = std::mem::take(&mut self.word);
        if self.command_start
            && let Some(Frame::Plain { cases, .. }) = self.stack.last_mut()
        {
            match word.as_str() {
                "case" => *cases += 1,
                "esac" => *cases = cases.saturating_sub(1),
                _ => {}
            }
        }
        self.command_start = KEYWORDS.contains(&word.as_str());
    }

    /// After `<<`: `-`, blanks, then the delimiter word, quoted or not.
    /// Returns whether `c` was taken as part of it. `<<` followed by anything
    /// that cannot start a word (`1 << 2`, `x <<= 1`, `<<<`) is no here-document.
    fn delimiter_char(&mut self, c: char) -> bool {
        let Some(doc) = &mut self.delimiter else { return false };
        let starting = doc.delimiter.is_empty() && !doc.quoted;
        match c {
            '-' if starting && !doc.strip => doc.strip = true,
            ' ' | '\t' if starting => {}
            '\'' | '"' | '\\' => doc.quoted = true,
            c if starting && !(c.is_alphabetic() || c == '_') => {
                self.delimiter = None;
                return c == '<';
            }
            c if c.is_whitespace() || ";&|<>()".contains(c) => {
                let in_parens = matches!(self.stack.last(), Some(Frame::Plain { parens, .. }) if *parens > 0);
                if let Some(doc) = self.delimiter.take()
                    && !doc.delimiter.is_empty()
                {
                    // `(( x << y ))` shifts; `( cat << y )` reads a document.
                    if in_parens { self.unsure = true } else { self.pending.push(doc) }
                }
                return false;
            }
            c => doc.delimiter.push(c),
        }
        true
    }

    fn newline(&mut self) {
        if self.body.is_none() && !self.pending.is_empty() {
            self.body = Some((self.pending.remove(0), self.stack.len()));
            self.line.clear();
            self.line_dirty = false;
        }
    }

    fn body_char(&mut self, c: char) {
        let quoted = self.body.as_ref().is_some_and(|(doc, _)| doc.quoted);
        if self.body_escaped {
            self.body_escaped = false;
            // Backslash-newline joins the lines: neither is the delimiter alone.
            if c == '\n' {
                self.line_dirty = true;
            } else {
                self.line.push(c);
            }
            return;
        }
        if !quoted {
            match c {
                '\\' => {
                    self.body_escaped = true;
                    self.line.push(c);
                    return;
                }
                '(' if self.prev == '$' => {
                    self.line_dirty = true;
                    return self.open_substitution();
                }
                '`' => {
                    self.line_dirty = true;
                    return self.stack.push(Frame::Backtick);
                }
                _ => {}
            }
        }
        if c != '\n' {
            self.line.push(c);
            return;
        }
        let Some((doc, _)) = &self.body else { return };
        let line = if doc.strip { self.line.trim_start_matches('\t') } else { self.line.as_str() };
        if !self.line_dirty && line == doc.delimiter {
            self.body = None;
            self.newline();
        }
        self.line.clear();
        self.line_dirty = false;
    }
}

//! DRBD resource files (`/etc/drbd.d/*.res`, drbd.conf(5)): the grammar.
//!
//! [`parse`] reads sections (`keyword [name] { ... }`), parameters (`name value...;`, or a
//! bare name for a boolean), double-quoted strings and `#` comments into [`Item`]s, with the
//! line of each for error messages. [`crate::import`] maps them to drl's TOML.

/// A parse error with its line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {what}")]
pub struct ResError {
    pub line: usize,
    pub what: String,
}

/// One statement: a parameter (`words;`) or a section (`words { items }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub words: Vec<String>,
    /// `Some` for a section.
    pub body: Option<Vec<Item>>,
    pub line: usize,
}

impl Item {
    pub(crate) fn key(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }
    pub(crate) fn arg(&self, i: usize) -> Option<&str> {
        self.words.get(i).map(String::as_str)
    }
    pub(crate) fn text(&self) -> String {
        self.words.join(" ")
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Open,
    Close,
    Semi,
}

fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, ResError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '{' | '}' | ';' => {
                chars.next();
                out.push((
                    match c {
                        '{' => Tok::Open,
                        '}' => Tok::Close,
                        _ => Tok::Semi,
                    },
                    line,
                ));
            }
            '"' => {
                chars.next();
                let start = line;
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(ResError {
                                line: start,
                                what: "unterminated string".into(),
                            })
                        }
                        Some('"') => break,
                        Some('\\') => {
                            if let Some(n) = chars.next() {
                                s.push(n);
                            }
                        }
                        Some('\n') => {
                            line += 1;
                            s.push('\n');
                        }
                        Some(x) => s.push(x),
                    }
                }
                out.push((Tok::Word(s), start));
            }
            _ => {
                let mut s = String::new();
                while let Some(&x) = chars.peek() {
                    if x.is_whitespace() || matches!(x, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    s.push(x);
                    chars.next();
                }
                out.push((Tok::Word(s), line));
            }
        }
    }
    Ok(out)
}

/// Parse a DRBD configuration text into its statements.
pub fn parse(text: &str) -> Result<Vec<Item>, ResError> {
    let toks = tokenize(text)?;
    let mut pos = 0;
    let items = parse_items(&toks, &mut pos, 0)?;
    if pos < toks.len() {
        return Err(ResError {
            line: toks[pos].1,
            what: "unexpected '}'".into(),
        });
    }
    Ok(items)
}

fn parse_items(
    toks: &[(Tok, usize)],
    pos: &mut usize,
    depth: usize,
) -> Result<Vec<Item>, ResError> {
    let mut items = Vec::new();
    let mut words = Vec::new();
    let mut first_line = 0;
    while *pos < toks.len() {
        let (tok, line) = &toks[*pos];
        match tok {
            Tok::Word(w) => {
                if words.is_empty() {
                    first_line = *line;
                }
                words.push(w.clone());
                *pos += 1;
            }
            Tok::Semi => {
                *pos += 1;
                if !words.is_empty() {
                    items.push(Item {
                        words: std::mem::take(&mut words),
                        body: None,
                        line: first_line,
                    });
                }
            }
            Tok::Open => {
                *pos += 1;
                if words.is_empty() {
                    return Err(ResError {
                        line: *line,
                        what: "'{' without a section keyword".into(),
                    });
                }
                let body = parse_items(toks, pos, depth + 1)?;
                items.push(Item {
                    words: std::mem::take(&mut words),
                    body: Some(body),
                    line: first_line,
                });
            }
            Tok::Close => {
                if depth == 0 {
                    return Ok(items);
                }
                if !words.is_empty() {
                    return Err(ResError {
                        line: *line,
                        what: format!("missing ';' after {:?}", words.join(" ")),
                    });
                }
                *pos += 1;
                return Ok(items);
            }
        }
    }
    if depth > 0 {
        return Err(ResError {
            line: toks.last().map_or(0, |t| t.1),
            what: "missing '}' at the end".into(),
        });
    }
    if !words.is_empty() {
        return Err(ResError {
            line: first_line,
            what: format!("missing ';' after {:?}", words.join(" ")),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_sections_parameters_strings_and_comments() {
        let items =
            parse("# c\nresource r0 { net { shared-secret \"a b;{\"; } on x { disk /dev/y; } }")
                .unwrap();
        assert_eq!(items.len(), 1);
        let body = items[0].body.as_ref().unwrap();
        assert_eq!(
            body[0].body.as_ref().unwrap()[0].words,
            ["shared-secret", "a b;{"]
        );
        assert_eq!(body[1].words, ["on", "x"]);
        assert!(parse("resource r0 { disk /dev/x }")
            .unwrap_err()
            .what
            .contains("missing ';'"));
        assert!(parse("resource r0 { net {")
            .unwrap_err()
            .what
            .contains("missing '}'"));
        assert!(parse("resource r0 { \"open")
            .unwrap_err()
            .what
            .contains("unterminated"));
    }
}

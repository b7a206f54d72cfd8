//! A small RFC 4180 reader that, unlike most, remembers whether each field was quoted: the data
//! set writes an absent seller response as the bare word `null`, which must load as NULL, while
//! a quoted `"null"` is text.

use std::io::BufRead;

/// One record: its fields' text (quotes removed, `""` unescaped) and whether each was quoted.
#[derive(Debug, Default)]
pub struct Record {
    text: String,
    fields: Vec<(usize, usize, bool)>,
    /// The 1-based line the record starts on.
    pub line: u64,
}

impl Record {
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn get(&self, i: usize) -> &str {
        let (start, end, _) = self.fields[i];
        &self.text[start..end]
    }

    /// Whether field `i` was written without quotes.
    pub fn is_bare(&self, i: usize) -> bool {
        !self.fields[i].2
    }
}

/// Why a record could not be read; the reader goes on with the next line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    pub line: u64,
    pub reason: String,
}

pub struct Reader<R> {
    input: R,
    line: u64,
    raw: Vec<u8>,
}

impl<R: BufRead> Reader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            line: 0,
            raw: Vec::new(),
        }
    }

    /// Reads the next record into `rec`. `Ok(false)` at the end of the input; `Err` for a record
    /// that is not valid CSV or UTF-8 (already skipped).
    pub fn read(&mut self, rec: &mut Record) -> std::io::Result<Result<bool, BadRecord>> {
        rec.text.clear();
        rec.fields.clear();
        rec.line = self.line + 1;
        let mut state = State::FieldStart;
        loop {
            self.raw.clear();
            if self.input.read_until(b'\n', &mut self.raw)? == 0 {
                return Ok(match state {
                    State::FieldStart if rec.fields.is_empty() => Ok(false),
                    State::Quoted { .. } => Err(self.bad(rec, "a quoted field is not closed")),
                    _ => Ok(true),
                });
            }
            self.line += 1;
            let Ok(line) = std::str::from_utf8(&self.raw) else {
                return Ok(Err(self.bad(rec, "the line is not valid UTF-8")));
            };
            let line = line.strip_suffix('\n').unwrap_or(line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            match parse_line(line, rec, state) {
                Ok(State::Quoted { start }) => {
                    rec.text.push('\n');
                    state = State::Quoted { start };
                }
                Ok(_) => return Ok(Ok(true)),
                Err(reason) => return Ok(Err(self.bad(rec, reason))),
            }
        }
    }

    fn bad(&self, rec: &Record, reason: &str) -> BadRecord {
        BadRecord {
            line: rec.line,
            reason: reason.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    FieldStart,
    Quoted { start: usize },
    Done,
}

/// Parses one physical line into `rec`, continuing a quoted field when `state` says so.
fn parse_line(line: &str, rec: &mut Record, state: State) -> Result<State, &'static str> {
    let bytes = line.as_bytes();
    let mut i = 0;
    let mut state = state;
    loop {
        match state {
            State::FieldStart => {
                if bytes.get(i) == Some(&b'"') {
                    state = State::Quoted {
                        start: rec.text.len(),
                    };
                    i += 1;
                    continue;
                }
                let end = line[i..].find(',').map_or(line.len(), |j| i + j);
                let start = rec.text.len();
                rec.text.push_str(&line[i..end]);
                rec.fields.push((start, rec.text.len(), false));
                if end == line.len() {
                    return Ok(State::Done);
                }
                i = end + 1;
            }
            State::Quoted { start } => {
                let Some(j) = line[i..].find('"') else {
                    rec.text.push_str(&line[i..]);
                    return Ok(state);
                };
                rec.text.push_str(&line[i..i + j]);
                i += j + 1;
                if bytes.get(i) == Some(&b'"') {
                    rec.text.push('"');
                    i += 1;
                    continue;
                }
                rec.fields.push((start, rec.text.len(), true));
                match bytes.get(i) {
                    None => return Ok(State::Done),
                    Some(b',') => {
                        i += 1;
                        state = State::FieldStart;
                    }
                    Some(_) => return Err("text follows a closing quote"),
                }
            }
            State::Done => return Ok(State::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &str) -> Vec<Result<Vec<(String, bool)>, BadRecord>> {
        let mut reader = Reader::new(input.as_bytes());
        let mut rec = Record::default();
        let mut out = Vec::new();
        loop {
            match reader.read(&mut rec).unwrap() {
                Ok(false) => return out,
                Ok(true) => out.push(Ok((0..rec.len())
                    .map(|i| (rec.get(i).to_string(), rec.is_bare(i)))
                    .collect())),
                Err(bad) => out.push(Err(bad)),
            }
        }
    }

    #[test]
    fn quoted_fields_keep_commas_quotes_and_newlines() {
        let rows = read_all("1,\"a, \"\"b\"\"\",null,\"null\"\r\n2,\"x\ny\",,\"\"\n");
        assert_eq!(
            rows[0].as_ref().unwrap(),
            &[
                ("1".into(), true),
                ("a, \"b\"".into(), false),
                ("null".into(), true),
                ("null".into(), false)
            ]
        );
        assert_eq!(
            rows[1].as_ref().unwrap(),
            &[
                ("2".into(), true),
                ("x\ny".into(), false),
                ("".into(), true),
                ("".into(), false)
            ]
        );
    }

    #[test]
    fn bad_records_name_their_line_and_reading_goes_on() {
        let rows = read_all("1,\"a\"b\n2,ok\n3,\"never closed\n");
        assert_eq!(
            rows[0],
            Err(BadRecord {
                line: 1,
                reason: "text follows a closing quote".into()
            })
        );
        assert_eq!(rows[1].as_ref().unwrap()[1].0, "ok");
        assert_eq!(
            rows[2],
            Err(BadRecord {
                line: 3,
                reason: "a quoted field is not closed".into()
            })
        );
    }
}

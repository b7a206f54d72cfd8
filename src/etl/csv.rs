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
    /// The record as it was in the file.
    pub raw: String,
}

impl Record {
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
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
    /// The line as it was in the file.
    pub raw: String,
}

/// A quoted field may span at most this many lines; past it, the opening quote is taken to be
/// a mistake.
const MAX_RECORD_LINES: usize = 64;

pub struct Reader<R> {
    input: R,
    line: u64,
    /// Lines read ahead of a record that turned out bad, to be read again.
    pending: std::collections::VecDeque<(u64, Vec<u8>)>,
    /// The physical lines of the record being read.
    lines: Vec<(u64, Vec<u8>)>,
    bytes_read: u64,
}

impl<R: BufRead> Reader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            line: 0,
            pending: Default::default(),
            lines: Vec::new(),
            bytes_read: 0,
        }
    }

    /// Bytes consumed from the input so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    fn next_line(&mut self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        if let Some(line) = self.pending.pop_front() {
            return Ok(Some(line));
        }
        let mut raw = Vec::new();
        let n = self.input.read_until(b'\n', &mut raw)?;
        if n == 0 {
            return Ok(None);
        }
        self.bytes_read += n as u64;
        self.line += 1;
        Ok(Some((self.line, raw)))
    }

    /// Reads the next record into `rec`. `Ok(false)` at the end of the input; `Err` for a record
    /// that is not valid CSV or UTF-8, already skipped. A bad record that spans several lines
    /// sets aside only its first line: reading resumes on the second, so a stray quote costs one
    /// row, not the rest of the file.
    pub fn read(&mut self, rec: &mut Record) -> std::io::Result<Result<bool, BadRecord>> {
        rec.text.clear();
        rec.fields.clear();
        self.lines.clear();
        let mut state = State::FieldStart;
        loop {
            let Some((number, raw)) = self.next_line()? else {
                return Ok(match state {
                    State::FieldStart if self.lines.is_empty() => Ok(false),
                    State::Quoted { .. } => {
                        Err(self.give_back(rec, "a quoted field is not closed"))
                    }
                    _ => Ok(true),
                });
            };
            if self.lines.is_empty() {
                rec.line = number;
            }
            self.lines.push((number, raw));
            let raw = &self.lines.last().expect("just pushed").1;
            let Ok(line) = std::str::from_utf8(raw) else {
                return Ok(Err(self.give_back(rec, "the line is not valid UTF-8")));
            };
            let line = line.strip_suffix('\n').unwrap_or(line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            match parse_line(line, rec, state) {
                Ok(State::Quoted { .. }) if self.lines.len() >= MAX_RECORD_LINES => {
                    return Ok(Err(self.give_back(rec, "a quoted field is not closed")));
                }
                Ok(State::Quoted { start }) => {
                    rec.text.push('\n');
                    state = State::Quoted { start };
                }
                Ok(_) => {
                    rec.raw.clear();
                    for (_, l) in &self.lines {
                        rec.raw.push_str(&String::from_utf8_lossy(l));
                    }
                    return Ok(Ok(true));
                }
                Err(reason) => return Ok(Err(self.give_back(rec, reason))),
            }
        }
    }

    /// Fails the record's first line and queues its other lines to be read again.
    fn give_back(&mut self, rec: &Record, reason: &str) -> BadRecord {
        let mut lines = std::mem::take(&mut self.lines).into_iter();
        let first = lines.next().map(|(_, raw)| raw).unwrap_or_default();
        for line in lines.rev() {
            self.pending.push_front(line);
        }
        BadRecord {
            line: rec.line,
            reason: reason.to_string(),
            raw: String::from_utf8_lossy(&first).into_owned(),
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
        let bad = |line: u64, reason: &str, raw: &str| {
            Err(BadRecord {
                line,
                reason: reason.into(),
                raw: raw.into(),
            })
        };
        assert_eq!(
            rows[0],
            bad(1, "text follows a closing quote", "1,\"a\"b\n")
        );
        assert_eq!(rows[1].as_ref().unwrap()[1].0, "ok");
        assert_eq!(
            rows[2],
            bad(3, "a quoted field is not closed", "3,\"never closed\n")
        );
    }

    #[test]
    fn a_stray_quote_costs_only_its_own_line() {
        let rows = read_all("1,\"stray,x\n2,\"fine\"\n3,\"also fine\"\n");
        assert_eq!(rows.len(), 3);
        assert!(matches!(&rows[0], Err(b) if b.line == 1));
        assert_eq!(rows[1].as_ref().unwrap()[1].0, "fine");
        assert_eq!(rows[2].as_ref().unwrap()[1].0, "also fine");
    }
}

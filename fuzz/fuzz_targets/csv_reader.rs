//! The CSV reader of `reviews load`: any bytes are read to their end as records or as bad
//! records with their line; it never panics, loops or reads a record twice.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reviews::etl::csv::{Reader, Record};

fuzz_target!(|data: &[u8]| {
    let lines = data.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let mut reader = Reader::new(data);
    let mut record = Record::default();
    let mut last_line = 0;
    for _ in 0..=lines {
        match reader.read(&mut record) {
            Ok(Ok(true)) => {
                assert!(record.line > last_line, "a record read twice");
                last_line = record.line;
                for i in 0..record.len() {
                    let _ = (record.get(i), record.is_bare(i));
                }
            }
            Ok(Ok(false)) => {
                assert!(reader.bytes_read() == data.len() as u64);
                return;
            }
            Ok(Err(bad)) => {
                assert!(bad.line >= 1 && bad.line <= lines, "bad record at line {}", bad.line);
                assert!(!bad.reason.is_empty());
            }
            Err(e) => panic!("reading a byte slice failed: {e}"),
        }
    }
    panic!("more records than lines: the reader loops");
});

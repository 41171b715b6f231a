//! Server-sent events, as upstreams send them: `data:` lines (several join with `\n`), an empty
//! line ends an event, `:` lines are comments, `\r\n` and `\n` both end lines. Bytes arrive in
//! arbitrary pieces; the parser keeps what it has not finished.

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// `event:` field (empty when absent).
    pub event: String,
    /// `data:` lines joined by `\n`.
    pub data: String,
    /// `id:` field.
    pub id: Option<String>,
}

/// Incremental parser; feed bytes, take events.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

/// Lines longer than this are a protocol error, not a memory sink.
pub const MAX_LINE: usize = 4 << 20;

impl SseParser {
    /// Adds bytes and returns the events they complete. A line over [`MAX_LINE`] is an error.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.buffer[start..start + pos];
            start += pos + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            self.line(&line, &mut events);
        }
        self.buffer.drain(..start);
        if self.buffer.len() > MAX_LINE {
            return Err(format!("an event line is longer than {MAX_LINE} bytes"));
        }
        Ok(events)
    }

    fn line(&mut self, line: &str, events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data || !self.current.event.is_empty() {
                events.push(std::mem::take(&mut self.current));
            }
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.current.event = value.to_owned(),
            "id" => self.current.id = Some(value.to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_are_reassembled() {
        let input =
            b"data: {\"a\":1}\r\n\r\n: keep-alive\n\nevent: message_stop\ndata: x\ndata: y\n\n";
        for split in 0..input.len() {
            let mut p = SseParser::default();
            let mut events = p.feed(&input[..split]).unwrap();
            events.extend(p.feed(&input[split..]).unwrap());
            assert_eq!(events.len(), 2, "split at {split}");
            assert_eq!(events[0].data, "{\"a\":1}");
            assert_eq!(events[1].event, "message_stop");
            assert_eq!(events[1].data, "x\ny");
        }
    }

    #[test]
    fn endless_lines_are_refused() {
        let mut p = SseParser::default();
        assert!(p.feed(&vec![b'a'; MAX_LINE + 1]).is_err());
    }
}

//! The driver's traceback formatter for the common case (`_format_common`
//! and the helpers under it in driver.py), ported to Rust for RustPython.
//!
//! Why a port: interpreted on a fresh copy of the snapshot, the Python
//! formatter was ~0.09 ms of a task that raises (~0.46 ms in all), most of
//! what a failing task cost over a passing one. driver.py stays the
//! formatter of the CPython tiers and says what this one does, step for
//! step; tests hold both to the traceback module's text. Anything this port
//! is not sure of is `None`, and the driver then asks the traceback module.

use rustpython_vm::builtins::{PyCode, PyStr, PyTraceback};
use rustpython_vm::{AsObject, Py, PyObjectRef, PyRef, VirtualMachine};

/// Not the common case, or not sure: the traceback module decides.
struct Unsure;

type Formatted<T> = Result<T, Unsure>;

impl From<rustpython_vm::builtins::PyBaseExceptionRef> for Unsure {
    fn from(_: rustpython_vm::builtins::PyBaseExceptionRef) -> Unsure {
        Unsure
    }
}

/// `_native_format_common(exc, tb, linecache)` for driver.py: the traceback
/// of `exc` from `tb` on, as the traceback module writes it, or None.
pub(crate) fn format_common(
    exc: PyObjectRef,
    tb: PyObjectRef,
    linecache: PyObjectRef,
    vm: &VirtualMachine,
) -> Option<String> {
    let linecache = (!vm.is_none(&linecache)).then_some(linecache);
    format(&exc, tb, linecache.as_ref(), vm).ok()
}

fn format(
    exc: &PyObjectRef,
    tb: PyObjectRef,
    linecache: Option<&PyObjectRef>,
    vm: &VirtualMachine,
) -> Formatted<String> {
    let types = &vm.ctx.exceptions;
    for full in [
        types.syntax_error,
        types.import_error,
        types.name_error,
        types.attribute_error,
        types.base_exception_group,
    ] {
        if exc.is_instance(full.as_object(), vm)? {
            return Err(Unsure);
        }
    }
    let is_set = |value: PyObjectRef| !vm.is_none(&value);
    if is_set(exc.get_attr("__cause__", vm)?)
        || (is_set(exc.get_attr("__context__", vm)?)
            && !exc.get_attr("__suppress_context__", vm)?.try_to_bool(vm)?)
        || vm.get_attribute_opt(exc, "__notes__")?.is_some_and(is_set)
        || vm
            .sys_module
            .dict()
            .get_item_opt("tracebacklimit", vm)?
            .is_some_and(is_set)
    {
        return Err(Unsure);
    }
    let kind = exc.class();
    let mut name = text(&kind.as_object().get_attr("__qualname__", vm)?)?;
    let module = kind.as_object().get_attr("__module__", vm)?;
    let module = module.downcast_ref::<PyStr>().map(|m| m.to_str());
    if !matches!(module, Some(Some("__main__" | "builtins"))) {
        let module = match module {
            Some(Some(module)) => module,
            Some(None) => return Err(Unsure),
            None => "<unknown>",
        };
        name = format!("{module}.{name}");
    }
    let message = match exc.str(vm) {
        Ok(message) => message.to_str().ok_or(Unsure)?.to_owned(),
        Err(_) => "<exception str() failed>".to_owned(),
    };
    let mut out = String::new();
    let mut tb = traceback(tb, vm)?;
    if tb.is_some() {
        out.push_str("Traceback (most recent call last):\n");
        let mut last = None;
        let mut repeats = 0;
        while let Some(frame) = tb {
            let code = frame_code(&frame, vm)?;
            let position = position(&frame, &code)?;
            let key = (
                code.source_path().as_str().to_owned(),
                position.0,
                code.code.obj_name.as_str().to_owned(),
            );
            if last.as_ref() != Some(&key) {
                if repeats > 3 {
                    out.push_str(&repeated(repeats - 3));
                }
                last = Some(key);
                repeats = 0;
            }
            repeats += 1;
            if repeats <= 3 {
                out.push_str(&frame_text(&frame, &code, position, linecache, vm)?);
            }
            tb = frame.next.lock().clone();
        }
        if repeats > 3 {
            out.push_str(&repeated(repeats - 3));
        }
    }
    if message.is_empty() {
        out.push_str(&name);
        out.push('\n');
    } else {
        out.push_str(&format!("{name}: {message}\n"));
    }
    Ok(out)
}

fn traceback(tb: PyObjectRef, vm: &VirtualMachine) -> Formatted<Option<PyRef<PyTraceback>>> {
    if vm.is_none(&tb) {
        return Ok(None);
    }
    tb.downcast::<PyTraceback>().map(Some).map_err(|_| Unsure)
}

fn frame_code(tb: &PyTraceback, vm: &VirtualMachine) -> Formatted<PyRef<PyCode>> {
    let code = tb.frame.as_object().get_attr("f_code", vm)?;
    code.downcast::<PyCode>().map_err(|_| Unsure)
}

fn text(object: &PyObjectRef) -> Formatted<String> {
    let text = object.downcast_ref::<PyStr>().ok_or(Unsure)?;
    Ok(text.to_str().ok_or(Unsure)?.to_owned())
}

fn repeated(count: usize) -> String {
    let plural = if count > 1 { "s" } else { "" };
    format!("  [Previous line repeated {count} more time{plural}]\n")
}

/// `(lineno, end_lineno, colno, end_colno)` of the frame's instruction.
type Position = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);

/// `_position`.
fn position(tb: &PyTraceback, code: &Py<PyCode>) -> Formatted<Position> {
    let lineno = Some(tb.lineno.get() as i64);
    if tb.lasti < 0 {
        return Ok((lineno, None, None, None));
    }
    let (line, end_line, column, end_column) =
        code.position(tb.lasti as usize / 2).ok_or(Unsure)?;
    let wide = |n: Option<i32>| n.map(i64::from);
    Ok((
        wide(line).or(lineno),
        wide(end_line),
        wide(column),
        wide(end_column),
    ))
}

fn optional(n: Option<i64>) -> String {
    n.map_or_else(|| "None".to_owned(), |n| n.to_string())
}

fn is_user_file(filename: &str) -> bool {
    filename == "<task>" || filename == "<script>" || filename.starts_with("<cell ")
}

/// `_frame_text`: one frame's lines.
fn frame_text(
    tb: &PyTraceback,
    code: &PyCode,
    position: Position,
    linecache: Option<&PyObjectRef>,
    vm: &VirtualMachine,
) -> Formatted<String> {
    // `co_filename`: importlib may have set it after the compile.
    let filename = code.source_path().as_str();
    let (lineno, end_lineno, colno, end_colno) = position;
    let head = format!(
        "  File \"{filename}\", line {}, in {}\n",
        optional(lineno),
        code.code.obj_name.as_str()
    );
    let line = if is_user_file(filename) {
        match linecache {
            Some(linecache) => {
                let cache = linecache.get_attr("cache", vm)?;
                let empty = vm.ctx.new_tuple(vec![
                    vm.ctx.new_int(0).into(),
                    vm.ctx.new_int(0).into(),
                    vm.ctx.empty_tuple.clone().into(),
                ]);
                let entry = vm.call_method(&cache, "get", (filename, empty))?;
                let int = |n: i64| -> PyObjectRef { vm.ctx.new_int(n).into() };
                let lines = entry.get_item(&*int(2), vm)?;
                match lineno {
                    Some(n) if n > 0 && n as usize <= lines.length(vm)? => {
                        text(&lines.get_item(&*int(n - 1), vm)?)?
                    }
                    _ => String::new(),
                }
            }
            None => String::new(),
        }
    } else {
        let linecache = linecache.ok_or(Unsure)?;
        let globals = tb.frame.as_object().get_attr("f_globals", vm)?;
        vm.call_method(linecache, "lazycache", (filename, globals))?;
        let lineno_object = match lineno {
            Some(n) => vm.ctx.new_int(n).into(),
            None => vm.ctx.none(),
        };
        let line = text(&vm.call_method(linecache, "getline", (filename, lineno_object))?)?;
        if line.is_empty() && filename.starts_with('<') {
            return Err(Unsure);
        }
        line
    };
    let line = line.trim_end_matches(is_space);
    if line.trim_matches(is_space).is_empty() {
        return Ok(head);
    }
    let (Some(colno), Some(end_colno)) = (colno, end_colno) else {
        return Ok(format!("{head}    {}\n", line.trim_matches(is_space)));
    };
    if end_lineno != lineno || !line.is_ascii() {
        return Err(Unsure);
    }
    let dedented = line.trim_start_matches([' ', '\t']);
    let shift = (line.len() - dedented.len()) as i64;
    let start = (colno - shift).max(0);
    let end = (end_colno - shift).max(0);
    Ok(match caret_line(dedented, start, end, vm)? {
        Some(carets) => format!("{head}    {dedented}\n    {carets}\n"),
        None => format!("{head}    {dedented}\n"),
    })
}

/// Python's whitespace (`str.isspace`): Unicode's, and the four separator
/// controls.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// `text[start:end]` (ASCII), clamped as Python slices are.
fn slice(text: &str, start: i64, end: i64) -> &str {
    let start = (start.max(0) as usize).min(text.len());
    let end = (end.max(0) as usize).min(text.len());
    if start >= end { "" } else { &text[start..end] }
}

fn repeat(c: char, count: i64) -> String {
    std::iter::repeat_n(c, count.max(0) as usize).collect()
}

/// `_caret_line`: the caret line under `line[start:end]` (a dedented ASCII
/// line), or None.
fn caret_line(line: &str, start: i64, end: i64, vm: &VirtualMachine) -> Formatted<Option<String>> {
    let segment = slice(line, start, end);
    let anchors = match caret_anchors(segment) {
        Ok(anchors) => anchors,
        Err(Unsure) => module_anchors(segment, vm)?,
    };
    let rest = slice(line, end, i64::MAX).trim_matches(is_space);
    if let (Some((returns, lead_end)), Some((left, _))) = (assigned_call(line), anchors)
        && lead_end as i64 == start
        && (rest.is_empty() || rest.starts_with(['#', ';']))
        && char_at(segment, left)? == b'('
        && (!returns || is_name_call(segment, left))
    {
        // `return name(...)` and `x = call(...)`: the traceback module
        // shows no carets under a call that is the whole statement.
        return Ok(None);
    }
    let Some((left, right)) = anchors else {
        if slice(line, 0, start).trim_matches(is_space).is_empty() && rest.is_empty() {
            return Ok(None);
        }
        return Ok(Some(repeat(' ', start) + &repeat('^', end - start)));
    };
    Ok(Some(
        repeat(' ', start)
            + &repeat('~', left)
            + &repeat('^', right - left)
            + &repeat('~', end - start - right),
    ))
}

/// `segment[index]`, Python's indexing (negative from the end).
fn char_at(segment: &str, index: i64) -> Formatted<u8> {
    let index = if index < 0 {
        index + segment.len() as i64
    } else {
        index
    };
    let index = usize::try_from(index).map_err(|_| Unsure)?;
    segment.as_bytes().get(index).copied().ok_or(Unsure)
}

/// `_module_anchors`: the traceback module's own anchors (it parses the
/// segment).
fn module_anchors(segment: &str, vm: &VirtualMachine) -> Formatted<Option<(i64, i64)>> {
    let found = vm.import("traceback", 0).and_then(|module| {
        vm.call_method(
            &module,
            "_extract_caret_anchors_from_line_segment",
            (segment,),
        )
    });
    let found = match found {
        Ok(found) if !vm.is_none(&found) => found,
        _ => return Ok(None),
    };
    let int = |name: &'static str, default: Option<i64>| -> Formatted<i64> {
        match vm.get_attribute_opt(&found, name)? {
            Some(value) => value.try_to_value::<i64>(vm).map_err(|_| Unsure),
            None => default.ok_or(Unsure),
        }
    };
    if int("left_end_lineno", Some(0))? != 0 || int("right_start_lineno", Some(0))? != 0 {
        return Err(Unsure);
    }
    let (left, right) = (
        int("left_end_offset", None)?,
        int("right_start_offset", None)?,
    );
    // The module's anchors lie in the segment; anything else (a module the
    // task replaced) is not trusted with the sizes of strings.
    if !(0 <= left && left <= right && right <= segment.len() as i64) {
        return Err(Unsure);
    }
    Ok(Some((left, right)))
}

/// `_ASSIGNED_CALL.match(line)`: `return ` or `name = ` leading the line,
/// as (whether it is `return`, where it ends).
fn assigned_call(line: &str) -> Option<(bool, usize)> {
    let bytes = line.as_bytes();
    let blanks = |from: usize| {
        from + bytes[from..]
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count()
    };
    if let Some(after) = line.strip_prefix("return") {
        let end = blanks(line.len() - after.len());
        if end > line.len() - after.len() {
            return Some((true, end));
        }
    }
    let name = name_len(bytes);
    if name == 0 {
        return None;
    }
    let at = blanks(name);
    if bytes.get(at) != Some(&b'=') || bytes.get(at + 1) == Some(&b'=') {
        return None;
    }
    Some((false, blanks(at + 1)))
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The length of the name (`[^\W\d]\w*`, ASCII) that `bytes` starts with.
fn name_len(bytes: &[u8]) -> usize {
    match bytes.first() {
        Some(&b) if is_word(b) && !b.is_ascii_digit() => {
            1 + bytes[1..].iter().take_while(|&&b| is_word(b)).count()
        }
        _ => 0,
    }
}

/// `_is_name_call`: whether the call whose arguments open at `paren` calls
/// a bare name.
fn is_name_call(segment: &str, paren: i64) -> bool {
    let name = name_len(segment.as_bytes());
    name > 0
        && slice(segment, name as i64, paren)
            .trim_matches(is_space)
            .is_empty()
}

/// `_LEADING_KEYWORD`: the keywords that make a segment a statement (or a
/// `not`, `lambda`, `await`...), which has no anchors.
const LEADING_KEYWORDS: [&str; 27] = [
    "raise", "assert", "del", "return", "import", "from", "pass", "global", "nonlocal", "break",
    "continue", "with", "while", "for", "if", "elif", "else", "try", "except", "finally", "def",
    "class", "async", "await", "yield", "lambda", "not",
];

fn leading_keyword(segment: &str) -> bool {
    LEADING_KEYWORDS.iter().any(|keyword| {
        segment.starts_with(keyword)
            && !segment
                .as_bytes()
                .get(keyword.len())
                .is_some_and(|&b| is_word(b))
    })
}

/// At the top level of a segment, these make it something without anchors
/// (`_NOT_ANCHORED`).
const NOT_ANCHORED: [&str; 24] = [
    "if", "else", "and", "or", "not", "in", "is", "lambda", "await", "yield", "for", "async", "<",
    ">", "<=", ">=", "==", "!=", ",", ":", ":=", "=", ";", "->",
];

fn binary_precedence(token: &str) -> Option<u8> {
    Some(match token {
        "|" => 1,
        "^" => 2,
        "&" => 3,
        "<<" | ">>" => 4,
        "+" | "-" => 5,
        "*" | "/" | "//" | "%" | "@" => 6,
        "**" => 8,
        _ => return None,
    })
}

fn is_opener(token: &str) -> bool {
    closer_of(token).is_some()
}

fn closer_of(opener: &str) -> Option<&'static str> {
    match opener {
        "(" => Some(")"),
        "[" => Some("]"),
        "{" => Some("}"),
        _ => None,
    }
}

/// One top-level token: its text, where it starts, and for a closing
/// bracket where its opener is.
type Token<'a> = (&'a str, usize, Option<usize>);

/// `_caret_anchors`: where the traceback module puts `^` in a segment,
/// `(start, end)` of a binary operation's operator or of the brackets of a
/// call or a subscript; None for other expressions.
fn caret_anchors(segment: &str) -> Formatted<Option<(i64, i64)>> {
    if leading_keyword(segment) {
        return Ok(None);
    }
    let tokens = top_level_tokens(segment)?;
    let Some(&(first, first_start, _)) = tokens.first() else {
        return Ok(None);
    };
    if tokens
        .iter()
        .any(|(text, _, _)| NOT_ANCHORED.contains(text))
    {
        return Ok(None);
    }
    // Binary operators: a + or - after an operand (not after an operator).
    let mut root: Option<(u8, usize, &str)> = None;
    let mut operand_before = false;
    for &(text, start, _) in &tokens {
        if let (Some(precedence), true) = (binary_precedence(text), operand_before) {
            if root.is_none_or(|(root_precedence, _, _)| {
                precedence < root_precedence || (precedence == root_precedence && text != "**")
            }) {
                root = Some((precedence, start, text));
            }
            operand_before = false;
        } else if matches!(text, "+" | "-" | "~") {
            if operand_before {
                return Err(Unsure);
            }
            operand_before = false;
        } else if !is_opener(text) {
            operand_before = true;
        }
    }
    let unary_first = matches!(first, "+" | "-" | "~");
    if let Some((_, start, text)) = root {
        if unary_first && text == "**" {
            return Ok(None); // -a ** b is the negation of a power
        }
        return Ok(Some((start as i64, (start + text.len()) as i64)));
    }
    if unary_first {
        return Ok(None);
    }
    let &(last, _, opener) = tokens.last().expect("not empty");
    if matches!(last, ")" | "]")
        && let Some(opener) = opener
    {
        if opener == first_start {
            return Err(Unsure); // a parenthesised expression, a list display
        }
        return Ok(Some((opener as i64, segment.len() as i64)));
    }
    Ok(None)
}

/// `_top_level_tokens`: the tokens of `segment` outside brackets; openers
/// at the top level are tokens too.
fn top_level_tokens(segment: &str) -> Formatted<Vec<Token<'_>>> {
    let mut tokens = Vec::new();
    let mut openers: Vec<(&str, usize)> = Vec::new();
    let bytes = segment.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        if is_space(bytes[at] as char) {
            at += 1;
            continue;
        }
        let len = token_len(&bytes[at..])?;
        let text = &segment[at..at + len];
        if is_opener(text) {
            if openers.is_empty() {
                tokens.push((text, at, None));
            }
            openers.push((text, at));
        } else if matches!(text, ")" | "]" | "}") {
            match openers.pop() {
                Some((opener, start)) if closer_of(opener) == Some(text) => {
                    if openers.is_empty() {
                        tokens.push((text, at, Some(start)));
                    }
                }
                _ => return Err(Unsure),
            }
        } else if openers.is_empty() {
            tokens.push((text, at, None));
        }
        at += len;
    }
    if !openers.is_empty() {
        return Err(Unsure);
    }
    Ok(tokens)
}

/// The length of the token `rest` starts with (`_TOKENS`, alternative by
/// alternative, in its order; `rest` is ASCII and starts with no blank).
/// What the scanner does not read (f- and t-strings, an unterminated
/// string, a line continuation, a comment) is `Unsure`.
fn token_len(rest: &[u8]) -> Formatted<usize> {
    let at = |i: usize| rest.get(i).copied().unwrap_or(0);
    let quote = |b: u8| b == b'\'' || b == b'"';
    let r = |b: u8| b == b'r' || b == b'R';
    // A string literal, with its prefix (the regex's alternatives in order).
    let mut prefixes = vec![];
    if b"rRbBuU".contains(&at(0)) {
        prefixes.push(1);
    }
    if (r(at(0)) && b"bB".contains(&at(1))) || (b"bB".contains(&at(0)) && r(at(1))) {
        prefixes.push(2);
    }
    prefixes.push(0);
    for prefix in prefixes {
        if let Some(len) = quoted(&rest[prefix..]) {
            return Ok(prefix + len);
        }
    }
    // What the scanner does not read.
    let f_or_t = |b: u8| b"fFtT".contains(&b);
    if (f_or_t(at(0)) && (quote(at(1)) || (r(at(1)) && quote(at(2)))))
        || (r(at(0)) && f_or_t(at(1)) && quote(at(2)))
        || b"'\"\\#".contains(&at(0))
    {
        return Err(Unsure);
    }
    // Numbers.
    let digits = |from: usize, extra: &dyn Fn(u8) -> bool| {
        from + rest[from.min(rest.len())..]
            .iter()
            .take_while(|&&b| b.is_ascii_digit() || b == b'_' || extra(b))
            .count()
    };
    if at(0) == b'0' && b"xXoObB".contains(&at(1)) {
        let end = digits(2, &|b| b.is_ascii_hexdigit());
        if end > 2 {
            return Ok(end);
        }
    }
    let mantissa = if at(0).is_ascii_digit() {
        let end = digits(1, &|_| false);
        let end = if at(end) == b'.' { end + 1 } else { end };
        Some(digits(end, &|_| false))
    } else if at(0) == b'.' && at(1).is_ascii_digit() {
        Some(digits(2, &|_| false))
    } else {
        None
    };
    if let Some(mut end) = mantissa {
        if b"eE".contains(&at(end)) {
            let sign = usize::from(b"-+".contains(&at(end + 1)));
            if at(end + 1 + sign).is_ascii_digit() {
                end = digits(end + 2 + sign, &|_| false);
            }
        }
        if b"jJ".contains(&at(end)) {
            end += 1;
        }
        return Ok(end);
    }
    // Names.
    let name = name_len(rest);
    if name > 0 {
        return Ok(name);
    }
    // Operators, then any other character.
    for operator in [
        "**", "//", "<<", ">>", "<=", ">=", "==", "!=", ":=", "->", "...",
    ] {
        if rest.starts_with(operator.as_bytes()) {
            return Ok(operator.len());
        }
    }
    Ok(1)
}

/// The length of the quoted string `rest` starts with (`'(?:[^'\\]|\\.)*'`
/// or its `"` twin), if it is one and is closed on this line.
fn quoted(rest: &[u8]) -> Option<usize> {
    let quote = *rest.first()?;
    if quote != b'\'' && quote != b'"' {
        return None;
    }
    let mut at = 1;
    loop {
        match *rest.get(at)? {
            b if b == quote => return Some(at + 1),
            b'\\' => {
                if matches!(rest.get(at + 1), None | Some(b'\n')) {
                    return None;
                }
                at += 2;
            }
            _ => at += 1,
        }
    }
}

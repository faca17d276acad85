//! The expressions of a derived metric's aggregates: arithmetic over its
//! inputs' aggregates, e.g. `city_metrics.requests / city_supply.active_drivers`.
//!
//! Grammar (usual precedence, left associative):
//!
//! ```text
//! expr   = term (("+" | "-") term)*
//! term   = factor (("*" | "/") factor)*
//! factor = number | metric "." aggregate | "(" expr ")" | "-" factor
//! ```
//!
//! Evaluation is over nullable numbers: a null operand gives null, and so do a
//! division by zero and a result that is not finite.

use std::fmt;

/// A parsed expression. References are resolved against the derived metric's
/// inputs by the spec validator.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    /// `metric.aggregate`: position of the metric among the derived metric's
    /// inputs, index of the aggregate in that metric.
    Ref {
        input: usize,
        aggregate: usize,
    },
    Neg(Box<Expr>),
    Bin(Box<Expr>, BinOp, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    fn symbol(self) -> char {
        match self {
            BinOp::Add => '+',
            BinOp::Sub => '-',
            BinOp::Mul => '*',
            BinOp::Div => '/',
        }
    }
}

/// A reference as written, before it is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRef {
    pub metric: String,
    pub aggregate: String,
}

/// Why an expression does not parse or resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error("unexpected `{found}` at column {column} (expected {expected})")]
    Unexpected { found: String, column: usize, expected: &'static str },
    #[error("the expression ends early (expected {expected})")]
    End { expected: &'static str },
    #[error("`{0}` is not a number")]
    Number(String),
    #[error("`{0}` must be written `metric.aggregate`")]
    Bare(String),
    #[error("{0}")]
    Resolve(String),
    #[error("the expression is nested more than {MAX_DEPTH} levels deep")]
    Depth,
}

/// Deepest nesting accepted (parentheses and unary minus), so a hostile spec cannot overflow the stack.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(String),
    Ident(String),
    Dot,
    Op(BinOp),
    Open,
    Close,
}

fn tokens(text: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let column = text[..at].chars().count() + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '+' | '-' | '*' | '/' => {
                let op = match c {
                    '+' => BinOp::Add,
                    '-' => BinOp::Sub,
                    '*' => BinOp::Mul,
                    _ => BinOp::Div,
                };
                out.push((column, Tok::Op(op)));
                i += 1;
            }
            '(' | ')' => {
                out.push((column, if c == '(' { Tok::Open } else { Tok::Close }));
                i += 1;
            }
            '.' if !chars.get(i + 1).is_some_and(|(_, d)| d.is_ascii_digit()) => {
                out.push((column, Tok::Dot));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                let start = i;
                while i < chars.len() {
                    let d = chars[i].1;
                    let exponent_sign = (d == '+' || d == '-') && i > start && matches!(chars[i - 1].1, 'e' | 'E');
                    if d.is_ascii_digit() || d == '.' || d == 'e' || d == 'E' || d == '_' || exponent_sign {
                        i += 1;
                    } else {
                        break;
                    }
                }
                out.push((column, Tok::Num(chars[start..i].iter().map(|(_, c)| *c).collect())));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].1.is_ascii_alphanumeric() || chars[i].1 == '_') {
                    i += 1;
                }
                out.push((column, Tok::Ident(chars[start..i].iter().map(|(_, c)| *c).collect())));
            }
            other => {
                return Err(ExprError::Unexpected { found: other.to_string(), column, expected: "a number, `metric.aggregate`, an operator or a parenthesis" });
            }
        }
    }
    Ok(out)
}

/// Maps a `metric.aggregate` reference to (input position, aggregate index), or says why it cannot.
pub type Resolver<'r> = dyn FnMut(&RawRef) -> Result<(usize, usize), String> + 'r;

struct Parser<'a, 'r> {
    toks: Vec<(usize, Tok)>,
    at: usize,
    resolve: &'a mut Resolver<'r>,
}

impl Parser<'_, '_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(_, t)| t)
    }

    fn unexpected(&self, expected: &'static str) -> ExprError {
        match self.toks.get(self.at) {
            None => ExprError::End { expected },
            Some((column, t)) => ExprError::Unexpected {
                found: match t {
                    Tok::Num(s) | Tok::Ident(s) => s.clone(),
                    Tok::Dot => ".".into(),
                    Tok::Op(o) => o.symbol().to_string(),
                    Tok::Open => "(".into(),
                    Tok::Close => ")".into(),
                },
                column: *column,
                expected,
            },
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut left = self.term(depth)?;
        while let Some(Tok::Op(op @ (BinOp::Add | BinOp::Sub))) = self.peek() {
            let op = *op;
            self.at += 1;
            let right = self.term(depth)?;
            left = Expr::Bin(Box::new(left), op, Box::new(right));
        }
        Ok(left)
    }

    fn term(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut left = self.factor(depth)?;
        while let Some(Tok::Op(op @ (BinOp::Mul | BinOp::Div))) = self.peek() {
            let op = *op;
            self.at += 1;
            let right = self.factor(depth)?;
            left = Expr::Bin(Box::new(left), op, Box::new(right));
        }
        Ok(left)
    }

    fn factor(&mut self, depth: usize) -> Result<Expr, ExprError> {
        if depth > MAX_DEPTH {
            return Err(ExprError::Depth);
        }
        const EXPECTED: &str = "a number, `metric.aggregate`, `(` or `-`";
        let Some(tok) = self.peek().cloned() else { return Err(self.unexpected(EXPECTED)) };
        self.at += 1;
        match tok {
            Tok::Num(s) => {
                let x: f64 = s.replace('_', "").parse().map_err(|_| ExprError::Number(s.clone()))?;
                if x.is_finite() { Ok(Expr::Num(x)) } else { Err(ExprError::Number(s)) }
            }
            Tok::Op(BinOp::Sub) => Ok(Expr::Neg(Box::new(self.factor(depth + 1)?))),
            Tok::Open => {
                let e = self.expr(depth + 1)?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(self.unexpected("`)`"));
                }
                self.at += 1;
                Ok(e)
            }
            Tok::Ident(metric) => {
                if self.peek() != Some(&Tok::Dot) {
                    return Err(ExprError::Bare(metric));
                }
                self.at += 1;
                let Some(Tok::Ident(aggregate)) = self.peek().cloned() else { return Err(self.unexpected("an aggregate name after `.`")) };
                self.at += 1;
                let (input, aggregate) = (self.resolve)(&RawRef { metric, aggregate }).map_err(ExprError::Resolve)?;
                Ok(Expr::Ref { input, aggregate })
            }
            _ => {
                self.at -= 1;
                Err(self.unexpected(EXPECTED))
            }
        }
    }
}

impl Expr {
    /// Parses `text`; `resolve` maps each `metric.aggregate` to (input position, aggregate index) or says why it cannot.
    pub fn parse(text: &str, resolve: &mut Resolver<'_>) -> Result<Expr, ExprError> {
        let toks = tokens(text)?;
        let mut p = Parser { toks, at: 0, resolve };
        let e = p.expr(0)?;
        if p.at < p.toks.len() {
            return Err(p.unexpected("an operator or the end"));
        }
        Ok(e)
    }

    /// The value over nullable inputs: `get(input, aggregate)`.
    pub fn eval(&self, get: &dyn Fn(usize, usize) -> Option<f64>) -> Option<f64> {
        let v = match self {
            Expr::Num(x) => Some(*x),
            Expr::Ref { input, aggregate } => get(*input, *aggregate),
            Expr::Neg(e) => e.eval(get).map(|x| -x),
            Expr::Bin(a, op, b) => {
                let (a, b) = (a.eval(get)?, b.eval(get)?);
                match op {
                    BinOp::Add => Some(a + b),
                    BinOp::Sub => Some(a - b),
                    BinOp::Mul => Some(a * b),
                    BinOp::Div if b == 0.0 => None,
                    BinOp::Div => Some(a / b),
                }
            }
        };
        v.filter(|x| x.is_finite())
    }

    /// Every (input, aggregate) the expression reads.
    pub fn refs(&self, out: &mut Vec<(usize, usize)>) {
        match self {
            Expr::Num(_) => {}
            Expr::Ref { input, aggregate } => out.push((*input, *aggregate)),
            Expr::Neg(e) => e.refs(out),
            Expr::Bin(a, _, b) => {
                a.refs(out);
                b.refs(out);
            }
        }
    }
}

/// Fully parenthesised, with references as `#input.aggregate` (stable: part of a metric's fingerprint).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Num(x) => write!(f, "{x:?}"),
            Expr::Ref { input, aggregate } => write!(f, "#{input}.{aggregate}"),
            Expr::Neg(e) => write!(f, "(-{e})"),
            Expr::Bin(a, op, b) => write!(f, "({a} {} {b})", op.symbol()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Expr, ExprError> {
        let names = [("a", ["x", "y"]), ("b", ["z", "w"])];
        Expr::parse(text, &mut |r| {
            let input = names.iter().position(|(m, _)| *m == r.metric).ok_or_else(|| format!("unknown input `{}`", r.metric))?;
            let agg = names[input].1.iter().position(|a| *a == r.aggregate).ok_or_else(|| format!("unknown aggregate `{}`", r.aggregate))?;
            Ok((input, agg))
        })
    }

    fn eval(text: &str, values: [[Option<f64>; 2]; 2]) -> Option<f64> {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).eval(&|i, a| values[i][a])
    }

    #[test]
    fn precedence_associativity_and_nulls() {
        let v = [[Some(10.0), Some(4.0)], [Some(2.0), None]];
        assert_eq!(eval("a.x / b.z", v), Some(5.0));
        assert_eq!(eval("a.x - a.y - b.z", v), Some(4.0), "left associative");
        assert_eq!(eval("a.x - a.y * b.z", v), Some(2.0), "* before -");
        assert_eq!(eval("(a.x - a.y) * b.z", v), Some(12.0));
        assert_eq!(eval("-a.x + 1e1", v), Some(0.0));
        assert_eq!(eval("--a.x", v), Some(10.0));
        assert_eq!(eval("a.x / (b.z - 2)", v), None, "division by zero is null");
        assert_eq!(eval("a.x + b.w", v), None, "null propagates");
        assert_eq!(eval("1.5e308 * 10 + a.x", v), None, "overflow is null, never inf");
        assert_eq!(eval(".5 * a.x", v), Some(5.0));
    }

    #[test]
    fn errors_say_where() {
        assert!(matches!(parse("a.x +"), Err(ExprError::End { .. })));
        assert!(matches!(parse("a.x b.z"), Err(ExprError::Unexpected { column: 5, .. })));
        assert!(matches!(parse("x"), Err(ExprError::Bare(_))));
        assert!(matches!(parse("c.x"), Err(ExprError::Resolve(m)) if m.contains("`c`")));
        assert!(matches!(parse("a.q"), Err(ExprError::Resolve(_))));
        assert!(matches!(parse("(a.x"), Err(ExprError::End { .. })));
        assert!(matches!(parse("a.x $ 2"), Err(ExprError::Unexpected { .. })));
        assert!(matches!(parse("1e999"), Err(ExprError::Number(_))));
        let deep = format!("{}a.x{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(parse(&deep), Err(ExprError::Depth));
        let negs = format!("{}a.x", "-".repeat(10_000));
        assert_eq!(parse(&negs), Err(ExprError::Depth));
    }

    #[test]
    fn display_is_stable() {
        let e = parse("a.x / (b.z - 2) * -a.y").expect("parses");
        assert_eq!(e.to_string(), "((#0.0 / (#1.0 - 2.0)) * (-#0.1))");
    }
}

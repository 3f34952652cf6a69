//! Statement classification with `sqlparser`: the only file that touches the parser's AST.
//!
//! [`classify`] parses a query string with the PostgreSQL dialect and reduces it to a small
//! [`Analysis`] value: what kind of statement it is (read, write, transaction control, ...)
//! and which tables it names. Everything downstream (routing) works on that value and never
//! re-reads the SQL.
//!
//! A statement is a [`Kind::Read`] only when it can run on a hot-standby replica with the same
//! result as on the primary. When in doubt the answer is [`Kind::Write`]: sending a read to
//! the primary costs a little load, sending a write to a replica fails the query.

use std::ops::ControlFlow;

use sqlparser::ast::{
    CopySource, CopyTarget, Expr, ObjectName, ObjectNamePart, ObjectType, Query, Select, Set,
    SetExpr, Statement, TableFactor, TransactionAccessMode, TransactionMode, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};

use super::patch::patch_tokens;
use super::write_functions;

mod copy;
pub mod fanout;
pub mod shard;
mod split;
pub use shard::ShardFacts;
pub use split::{split_insert, split_insert_params};

/// What a query string does, as far as routing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Reads only: `SELECT`, `TABLE`, `VALUES`, `EXPLAIN` (without `ANALYZE` of a write),
    /// `COPY ... TO STDOUT`, `DECLARE ... CURSOR FOR` a read. Safe on a replica.
    Read,
    /// Changes data or schema, takes row locks, or calls a function with side effects.
    Write,
    /// `BEGIN` / `START TRANSACTION`; `read_only` for `READ ONLY` transactions.
    Begin {
        /// The transaction was opened `READ ONLY`.
        read_only: bool,
    },
    /// `SET TRANSACTION READ ONLY` (inside a transaction: the rest of it only reads).
    SetTransactionReadOnly,
    /// `COMMIT` / `END` (without `AND CHAIN`).
    Commit,
    /// `ROLLBACK` / `ABORT` (without `TO SAVEPOINT` or `AND CHAIN`).
    Rollback,
    /// `SET` (other than `SET TRANSACTION READ ONLY`) and `RESET`: session or transaction
    /// settings.
    Set,
    /// `SHOW name`: reads a setting. Safe anywhere, but the answer may depend on the server
    /// (`transaction_read_only` is `on` on a replica), so it is not a plain [`Kind::Read`].
    Show,
    /// Neither reads nor writes table data and leaves the transaction open or closed as it
    /// was: `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`, `COMMIT/ROLLBACK AND CHAIN`, `PREPARE`,
    /// `DEALLOCATE`, `DISCARD`, `LISTEN`, `UNLISTEN`, `FETCH`, `CLOSE`, an empty query. It
    /// belongs on the session's current server connection (the primary when there is none).
    Other,
    /// `sqlparser` could not parse the text; send it to the primary and let Postgres decide.
    Unparsed,
}

/// The routing-relevant facts of one query string (which may hold several statements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The kind of the whole string. Several statements form a [`Kind::Read`] only if each is
    /// a read, a [`Kind::Show`] if each is a read or a `SHOW`, and a [`Kind::Write`] otherwise.
    pub kind: Kind,
    /// Relations the statements name, in order of first appearance, without duplicates and
    /// without CTE names or set-returning functions: unquoted identifiers lowercased (as
    /// PostgreSQL folds them), quoted ones as written, schema-qualified if the SQL was.
    pub tables: Vec<String>,
    /// Some query has a locking clause (`FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`,
    /// `FOR KEY SHARE`).
    pub for_update: bool,
    /// Some query has a data-modifying `WITH` (`WITH x AS (INSERT/UPDATE/DELETE/MERGE ...)`).
    pub writing_cte: bool,
    /// The first function with side effects that the statements call, if any, named like
    /// `tables` (folded, schema-qualified if the call was). See [`write_functions`].
    pub write_function: Option<String>,
    /// Number of statements in the string.
    pub statements: usize,
    /// The parser's message when `kind` is [`Kind::Unparsed`].
    pub parse_error: Option<String>,
    /// Shard-routing facts, for a single statement parsed without patching.
    pub shard: Option<Box<ShardFacts>>,
}

/// Parses `sql` (PostgreSQL dialect) and classifies it. `write_functions` names user functions
/// with side effects, in addition to the built-in ones (matching rules in
/// [`write_functions`]). Never fails: unparseable text yields
/// [`Kind::Unparsed`].
pub fn classify(sql: &str, write_functions: &[String]) -> Analysis {
    classify_shaped(sql, &super::shape(sql), write_functions)
}

/// [`classify`], given `sql`'s shape (so shard facts can refer to literals by their index in
/// the shape; a reference is made only where the shape's literal starts at exactly the
/// parser's token and holds the same value).
pub fn classify_shaped(sql: &str, shaped: &super::Shape, write_functions: &[String]) -> Analysis {
    let (statements, patched) = match parse(sql) {
        Ok(s) => s,
        Err(e) => {
            return Analysis {
                kind: Kind::Unparsed,
                tables: Vec::new(),
                for_update: false,
                writing_cte: false,
                write_function: None,
                statements: 0,
                parse_error: Some(e.to_string()),
                shard: None,
            }
        }
    };
    let mut facts = Facts::new(write_functions);
    let mut any = Effects::default();
    let mut kinds = Vec::with_capacity(statements.len());
    for stmt in &statements {
        facts.effects = Effects::default();
        facts.depth = 0;
        let _ = stmt.visit(&mut facts);
        kinds.push(statement_kind(stmt, &facts.effects));
        facts.effects.merge_into(&mut any);
    }
    let kind = match kinds.as_slice() {
        [] => Kind::Other,
        [one] => *one,
        [Kind::Begin { read_only }, rest @ ..]
            if (*read_only || rest.first() == Some(&Kind::SetTransactionReadOnly))
                && rest.iter().all(|k| {
                    matches!(
                        k,
                        Kind::Read
                            | Kind::Show
                            | Kind::Set
                            | Kind::SetTransactionReadOnly
                            | Kind::Commit
                            | Kind::Rollback
                            | Kind::Other
                    )
                }) =>
        {
            // `BEGIN READ ONLY; SELECT ...; COMMIT` in one string: a read-only transaction.
            Kind::Begin { read_only: true }
        }
        many if many.iter().all(|k| *k == Kind::Read) => Kind::Read,
        many if many.iter().all(|k| matches!(k, Kind::Read | Kind::Show)) => Kind::Show,
        _ => Kind::Write,
    };
    let Facts {
        mut tables,
        cte_names,
        ..
    } = facts;
    tables.retain(|t| !cte_names.contains(t));
    let shard = match statements.as_slice() {
        [one] => {
            // After a patch the text's positions changed: no value is referenced then
            // (keys read as unknown, which never routes wrongly).
            let (offsets, literals) = if patched {
                (&[][..], &[][..])
            } else {
                (&shaped.offsets[..], &shaped.literals[..])
            };
            let pos = shard::Positions::new(sql, offsets, literals);
            Some(Box::new(shard::facts(one, &pos)))
        }
        _ => None,
    };
    Analysis {
        kind,
        tables,
        for_update: any.locks,
        writing_cte: any.writing_cte,
        write_function: any.write_function,
        statements: statements.len(),
        parse_error: None,
        shard,
    }
}

/// Parses with the PostgreSQL dialect. When that fails, retries once with the PostgreSQL
/// syntax that `sqlparser` 0.64 lacks rewritten at the token level (see [`patch`]); the
/// first error is the one reported.
/// Returns the statements and whether the text had to be patched.
fn parse(sql: &str) -> Result<(Vec<Statement>, bool), ParserError> {
    let dialect = PostgreSqlDialect {};
    match Parser::parse_sql(&dialect, sql) {
        Ok(s) => Ok((s, false)),
        Err(e) => match patch_tokens(sql) {
            Some(patched) => Parser::parse_sql(&dialect, &patched)
                .map(|s| (s, true))
                .map_err(|_| e),
            None => Err(e),
        },
    }
}

/// Side effects found while walking one statement (or, merged, all of them).
#[derive(Debug, Default, Clone)]
struct Effects {
    locks: bool,
    writing_cte: bool,
    /// INSERT/UPDATE/DELETE/MERGE below the top level (in a CTE, or the body of a
    /// top-level `WITH ... INSERT`).
    nested_dml: bool,
    select_into: bool,
    write_function: Option<String>,
}

impl Effects {
    fn writes(&self) -> bool {
        self.locks || self.nested_dml || self.select_into || self.write_function.is_some()
    }

    fn merge_into(&self, any: &mut Effects) {
        any.locks |= self.locks;
        any.writing_cte |= self.writing_cte;
        any.nested_dml |= self.nested_dml;
        any.select_into |= self.select_into;
        if any.write_function.is_none() {
            any.write_function.clone_from(&self.write_function);
        }
    }
}

/// The AST visitor: one walk per statement collects tables and side effects.
struct Facts<'w> {
    extra: &'w [String],
    tables: Vec<String>,
    cte_names: Vec<String>,
    /// Names of set-returning functions in `FROM` (`FROM generate_series(...)`), which the
    /// relation visitor would otherwise report as tables. Compared by address.
    from_functions: Vec<*const ObjectName>,
    /// Statement nesting depth: DML below the top level is a data-modifying CTE.
    depth: usize,
    /// Side effects of the statement being walked.
    effects: Effects,
}

impl<'w> Facts<'w> {
    fn new(extra: &'w [String]) -> Self {
        Facts {
            extra,
            tables: Vec::new(),
            cte_names: Vec::new(),
            from_functions: Vec::new(),
            depth: 0,
            effects: Effects::default(),
        }
    }

    fn table(&mut self, name: &ObjectName) {
        let name = object_name(name);
        if !self.tables.contains(&name) {
            self.tables.push(name);
        }
    }

    fn function_call(&mut self, name: &ObjectName) {
        if self.effects.write_function.is_none() && is_write_function(name, self.extra) {
            self.effects.write_function = Some(object_name(name));
        }
    }
}

impl Visitor for Facts<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        if self.depth > 0
            && matches!(
                stmt,
                Statement::Insert(_)
                    | Statement::Update(_)
                    | Statement::Delete(_)
                    | Statement::Merge(_)
            )
        {
            self.effects.nested_dml = true;
        }
        self.depth += 1;
        // Names the relation visitor does not report.
        match stmt {
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                ..
            } => self.table(table_name),
            Statement::Drop {
                object_type: ObjectType::Table | ObjectType::View | ObjectType::MaterializedView,
                names,
                ..
            } => names.iter().for_each(|n| self.table(n)),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _stmt: &Statement) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            self.effects.locks = true;
        }
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.cte_names.push(ident_name(&cte.alias.name));
                if matches!(
                    *cte.query.body,
                    SetExpr::Insert(_)
                        | SetExpr::Update(_)
                        | SetExpr::Delete(_)
                        | SetExpr::Merge(_)
                ) {
                    self.effects.writing_cte = true;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if select.into.is_some() {
            self.effects.select_into = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.from_functions.push(std::ptr::from_ref(name));
                self.function_call(name);
            }
            TableFactor::Function { name, .. } => self.function_call(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if !self.from_functions.contains(&std::ptr::from_ref(relation)) {
            self.table(relation);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            self.function_call(&f.name);
        }
        ControlFlow::Continue(())
    }
}

/// The kind of one statement, given the side effects found in it.
fn statement_kind(stmt: &Statement, effects: &Effects) -> Kind {
    let read_unless_effects = if effects.writes() {
        Kind::Write
    } else {
        Kind::Read
    };
    match stmt {
        Statement::Query(_) => read_unless_effects,
        Statement::Explain {
            analyze,
            options,
            statement,
            ..
        } => {
            let analyze = *analyze
                || options.iter().flatten().any(|o| {
                    o.name.value.eq_ignore_ascii_case("analyze")
                        && o.arg.as_ref().is_none_or(option_is_true)
                });
            match statement_kind(statement, effects) {
                Kind::Read => Kind::Read,
                _ if analyze => Kind::Write,
                _ => Kind::Read,
            }
        }
        Statement::ExplainTable { .. } => Kind::Read,
        Statement::Declare { stmts, .. } if stmts.iter().all(|d| d.for_query.is_some()) => {
            read_unless_effects
        }
        Statement::Copy {
            to: true,
            target: CopyTarget::Stdout,
            ..
        } => read_unless_effects,
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => Kind::Show,
        Statement::StartTransaction { modes, .. } => Kind::Begin {
            read_only: read_only(modes),
        },
        Statement::Set(Set::SetTransaction {
            modes,
            session: false,
            ..
        }) if read_only(modes) => Kind::SetTransactionReadOnly,
        Statement::Set(_) | Statement::Reset(_) => Kind::Set,
        Statement::Commit { chain: false, .. } => Kind::Commit,
        Statement::Rollback {
            chain: false,
            savepoint: None,
        } => Kind::Rollback,
        Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Prepare { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Kind::Other,
        _ => Kind::Write,
    }
}

/// `EXPLAIN (ANALYZE x)`: anything but false/off/0 turns it on.
fn option_is_true(arg: &Expr) -> bool {
    let off = |s: &str| {
        ["false", "off", "0", "no"]
            .iter()
            .any(|f| f.eq_ignore_ascii_case(s))
    };
    match arg {
        Expr::Value(v) => match &v.value {
            Value::Boolean(b) => *b,
            Value::Number(n, _) => n != "0",
            Value::SingleQuotedString(s) => !off(s),
            _ => true,
        },
        Expr::Identifier(i) => !off(&i.value),
        _ => true,
    }
}

/// The access mode of a transaction: the last `READ ONLY`/`READ WRITE` wins.
fn read_only(modes: &[TransactionMode]) -> bool {
    modes
        .iter()
        .rev()
        .find_map(|m| match m {
            TransactionMode::AccessMode(a) => Some(*a == TransactionAccessMode::ReadOnly),
            TransactionMode::IsolationLevel(_) => None,
        })
        .unwrap_or(false)
}

/// An identifier as PostgreSQL resolves it: folded to lowercase unless quoted.
fn ident_name(ident: &sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn part_name(part: &ObjectNamePart) -> String {
    match part {
        ObjectNamePart::Identifier(ident) => ident_name(ident),
        other => other.to_string(),
    }
}

/// A possibly qualified name, parts joined with `.`.
fn object_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(&part_name(part));
    }
    out
}

/// Whether a called function has side effects (see [`write_functions`]).
fn is_write_function(name: &ObjectName, extra: &[String]) -> bool {
    let parts = name.0.iter().map(|p| match p {
        ObjectNamePart::Identifier(ident) => ident.value.as_str(),
        ObjectNamePart::Function(_) => "",
    });
    write_functions::is_write_function(parts, extra)
}

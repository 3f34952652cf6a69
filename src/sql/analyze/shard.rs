//! Shard-routing facts of one statement, read from its AST: which tables it touches, the
//! `column = value` and `column IN (...)` conditions that can fix a shard key, the rows of an
//! `INSERT ... VALUES`, the columns an `UPDATE` assigns, and what a `COPY` moves.
//!
//! Facts are cached by statement shape, so values are recorded as *references*: the index of
//! a literal in the shape's literal list ([`crate::sql::Shape::literals`]) or a `$n`
//! parameter number, never the value itself. Config-dependent decisions (which tables are
//! sharded, which shard owns a key) are made later by the router.

use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, Expr, FromTable, InTarget, Insert, JoinConstraint,
    JoinOperator, ObjectName, Query, Select, SetExpr, Statement, TableFactor, TableObject,
    TableWithJoins, UnaryOperator, Value, ValueWithSpan, Visit, Visitor,
};

use super::copy::copy_facts;
mod values;

pub use super::copy::CopyFacts;
use super::{ident_name, object_name};
use crate::sql::shape::Literal;
use values::value_ref;

/// Where a value in a statement comes from. A `$n` parameter is referred to by its shape
/// literal index like any constant (the shape's literal list says which parameter it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueRef {
    /// The shape literal with this index; `negative` for a unary minus in front.
    Literal {
        /// Index into the shape's literals.
        index: usize,
        /// Preceded by `-`.
        negative: bool,
    },
    /// A `$n` parameter.
    Param(u16),
    /// `NULL`.
    Null,
    /// An expression the router cannot evaluate (function call, column, ...).
    Other,
}

/// A column, with the table it belongs to (empty when unqualified and several tables are in
/// scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRef {
    /// Table name as written (schema-qualified if it was), aliases resolved.
    pub table: String,
    /// Column name.
    pub column: String,
}

/// `column = value` or `column IN (values)` from a top-level `AND` chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFilter {
    /// The column.
    pub column: ColumnRef,
    /// One value for `=`, the list for `IN`.
    pub values: Vec<ValueRef>,
}

/// What the statement is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Command {
    /// A query.
    Select,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `COPY`.
    Copy,
    /// Schema changes and maintenance (`CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `VACUUM`,
    /// `ANALYZE`, `CREATE INDEX`, `COMMENT`, `GRANT`, ...): every shard.
    Broadcast,
    /// Anything else.
    #[default]
    Other,
}

/// `INSERT INTO table (columns) VALUES (...), (...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertFacts {
    /// Target table.
    pub table: String,
    /// Explicit column list (empty: the table's column order).
    pub columns: Vec<String>,
    /// Each VALUES row; empty when the source is not a VALUES list (`INSERT ... SELECT`).
    pub rows: Vec<Vec<ValueRef>>,
    /// Has a RETURNING clause.
    pub returning: bool,
}

/// The shard-routing facts of one statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardFacts {
    /// What it is.
    pub command: Command,
    /// Tables it reads or writes (outer query; subqueries set `nested`).
    pub tables: Vec<String>,
    /// Conditions that can fix a key.
    pub filters: Vec<KeyFilter>,
    /// `a.x = b.y` equalities (join conditions).
    pub column_equalities: Vec<(ColumnRef, ColumnRef)>,
    /// INSERT details.
    pub insert: Option<InsertFacts>,
    /// Columns an UPDATE assigns.
    pub set_columns: Vec<String>,
    /// COPY details.
    pub copy: Option<CopyFacts>,
    /// Has subqueries, CTEs or set operations: tables inside them are in `tables` of the
    /// enclosing analysis but their conditions are not in `filters`.
    pub nested: bool,
    /// For each of `column_equalities`, the index in `tables` of the table occurrence each
    /// side belongs to (None: not known, e.g. an unqualified column of several tables). A
    /// self-join is two occurrences of one table.
    pub equality_sides: Vec<(Option<usize>, Option<usize>)>,
    /// Every other SELECT in the statement (subqueries of any kind, derived tables, CTE
    /// bodies, set-operation branches), each with its own tables and conditions.
    pub units: Vec<ShardFacts>,
    /// Calls a window function somewhere.
    pub window: bool,
    /// Has an outer (LEFT/RIGHT/FULL) join or a lateral / cross-apply construct.
    pub outer_join: bool,
}

/// Maps AST positions to shape literal indices, exactly: a value refers to the shape literal
/// that starts at the very byte where the parser's token starts, and only if both read the
/// same value from it. Anything else (no literal there, a different reading) is no reference
/// at all, which never routes a row to a wrong shard. Positions are never matched by
/// proximity: in `IN (1,2)` the two literals are two bytes apart.
pub(super) struct Positions<'a> {
    /// Byte offset where each line starts (sqlparser counts lines by `\n`).
    lines: Vec<usize>,
    sql: &'a str,
    /// Byte offset of each shape literal (ascending).
    offsets: &'a [usize],
    /// The shape literals (same order), to confirm the parser read the same value.
    literals: &'a [Literal],
}

impl<'a> Positions<'a> {
    pub(super) fn new(sql: &'a str, offsets: &'a [usize], literals: &'a [Literal]) -> Self {
        let mut lines = vec![0];
        lines.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        Positions {
            lines,
            sql,
            offsets,
            literals,
        }
    }

    /// The byte offset of a parser location (1-based line, 1-based column in characters).
    fn byte_of(&self, loc: sqlparser::tokenizer::Location) -> Option<usize> {
        let line_start = *self.lines.get((loc.line as usize).checked_sub(1)?)?;
        let col = (loc.column as usize).checked_sub(1)?;
        let rest = self.sql.get(line_start..)?;
        let (b, _) = rest.char_indices().nth(col)?;
        Some(line_start + b)
    }

    /// The shape literal at exactly a value's start position, if the shape read the same
    /// value there.
    fn literal(&self, v: &ValueWithSpan) -> Option<usize> {
        let byte = self.byte_of(v.span.start)?;
        let index = self.offsets.binary_search(&byte).ok()?;
        let same = match (&v.value, self.literals.get(index)?) {
            (Value::Number(n, false), Literal::Number(l)) => n == l,
            (
                Value::SingleQuotedString(s)
                | Value::EscapedStringLiteral(s)
                | Value::NationalStringLiteral(s),
                Literal::String(l),
            ) => s == l,
            (Value::DollarQuotedString(d), Literal::String(l)) => d.value == *l,
            (Value::Placeholder(p), Literal::Param(n)) => {
                p.strip_prefix('$').and_then(|x| x.parse::<u16>().ok()) == Some(*n)
            }
            _ => false,
        };
        same.then_some(index)
    }
}

struct Scope {
    /// (name, alias) of each table in FROM/JOIN/target.
    tables: Vec<(String, Option<String>)>,
}

impl Scope {
    fn add(&mut self, name: String, alias: Option<String>) {
        self.tables.push((name, alias));
    }

    fn add_factor(&mut self, f: &TableFactor) -> bool {
        match f {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                self.add(
                    object_name(name),
                    alias.as_ref().map(|a| ident_name(&a.name)),
                );
                true
            }
            _ => false,
        }
    }

    /// The index of the table occurrence a column belongs to.
    fn occurrence(&self, expr: &Expr) -> Option<usize> {
        match expr {
            Expr::Identifier(_) if self.tables.len() == 1 => Some(0),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let n = parts.len();
                let q: Vec<String> = parts[..n - 1].iter().map(ident_name).collect();
                let q = q.join(".");
                let by_alias = self
                    .tables
                    .iter()
                    .position(|(_, alias)| alias.as_deref() == Some(q.as_str()));
                by_alias.or_else(|| {
                    let mut it = self
                        .tables
                        .iter()
                        .enumerate()
                        .filter(|(_, (name, alias))| alias.is_none() && *name == q);
                    match (it.next(), it.next()) {
                        (Some((i, _)), None) => Some(i),
                        _ => None,
                    }
                })
            }
            Expr::Nested(e) => self.occurrence(e),
            _ => None,
        }
    }

    fn column(&self, expr: &Expr) -> Option<ColumnRef> {
        let (qualifier, column) = match expr {
            Expr::Identifier(c) => (None, ident_name(c)),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let n = parts.len();
                let q: Vec<String> = parts[..n - 1].iter().map(ident_name).collect();
                (Some(q.join(".")), ident_name(&parts[n - 1]))
            }
            Expr::Nested(e) => return self.column(e),
            _ => return None,
        };
        let table = match qualifier {
            Some(q) => self
                .tables
                .iter()
                .find(|(name, alias)| alias.as_deref() == Some(q.as_str()) || *name == q)
                .map(|(name, _)| name.clone())
                .unwrap_or(q),
            None if self.tables.len() == 1 => self.tables[0].0.clone(),
            None => String::new(),
        };
        Some(ColumnRef { table, column })
    }
}

/// Collects filters and column equalities from the top-level `AND` chain of `expr`.
fn conjuncts(expr: &Expr, scope: &Scope, pos: &Positions<'_>, facts: &mut ShardFacts) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, scope, pos, facts);
            conjuncts(right, scope, pos, facts);
        }
        Expr::Nested(e) => conjuncts(e, scope, pos, facts),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => match (scope.column(left), scope.column(right)) {
            (Some(a), Some(b)) => {
                facts.column_equalities.push((a, b));
                facts
                    .equality_sides
                    .push((scope.occurrence(left), scope.occurrence(right)));
            }
            (Some(c), None) => facts.filters.push(KeyFilter {
                column: c,
                values: vec![value_ref(right, pos)],
            }),
            (None, Some(c)) => facts.filters.push(KeyFilter {
                column: c,
                values: vec![value_ref(left, pos)],
            }),
            (None, None) => {}
        },
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated: false,
            ..
        } => {
            if let Some(c) = scope.column(expr) {
                facts.filters.push(KeyFilter {
                    column: c,
                    values: list.iter().map(|e| value_ref(e, pos)).collect(),
                });
            }
        }
        _ => {}
    }
}

/// Adds a FROM list to the scope; returns false if something other than plain tables and
/// joins is in it (derived tables, functions).
fn from_list(from: &[TableWithJoins], scope: &mut Scope) -> bool {
    let mut plain = true;
    for twj in from {
        plain &= scope.add_factor(&twj.relation);
        for j in &twj.joins {
            plain &= scope.add_factor(&j.relation);
        }
    }
    plain
}

/// Join conditions of a FROM list: equalities always, value filters only of inner joins.
fn join_conditions(
    from: &[TableWithJoins],
    scope: &Scope,
    pos: &Positions<'_>,
    facts: &mut ShardFacts,
) {
    for twj in from {
        for j in &twj.joins {
            let (constraint, inner) = match &j.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) => (c, true),
                JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c) => {
                    facts.outer_join = true;
                    (c, false)
                }
                JoinOperator::CrossJoin(_) => continue,
                _ => {
                    facts.outer_join = true;
                    continue;
                }
            };
            if let JoinConstraint::On(e) = constraint {
                let mut tmp = ShardFacts::default();
                conjuncts(e, scope, pos, &mut tmp);
                facts.column_equalities.extend(tmp.column_equalities);
                facts.equality_sides.extend(tmp.equality_sides);
                if inner {
                    facts.filters.extend(tmp.filters);
                }
            }
        }
    }
}

fn query_facts(q: &Query, pos: &Positions<'_>, facts: &mut ShardFacts) {
    if q.with.is_some() {
        facts.nested = true;
    }
    match q.body.as_ref() {
        SetExpr::Select(s) => select_facts(s, pos, facts),
        SetExpr::Values(_) => {}
        _ => facts.nested = true,
    }
}

fn select_facts(s: &Select, pos: &Positions<'_>, facts: &mut ShardFacts) {
    let mut scope = Scope { tables: Vec::new() };
    if !from_list(&s.from, &mut scope) {
        facts.nested = true;
    }
    facts
        .tables
        .extend(scope.tables.iter().map(|(n, _)| n.clone()));
    join_conditions(&s.from, &scope, pos, facts);
    if let Some(w) = &s.selection {
        conjuncts(w, &scope, pos, facts);
    }
}

/// Collects every SELECT of a statement but `top` as a unit of its own, and window calls.
struct Units<'p, 'a> {
    pos: &'p Positions<'a>,
    top: Option<*const Select>,
    units: Vec<ShardFacts>,
    window: bool,
}

impl Visitor for Units<'_, '_> {
    type Break = ();

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if self.top != Some(std::ptr::from_ref(s)) {
            let mut f = ShardFacts {
                command: Command::Select,
                ..ShardFacts::default()
            };
            select_facts(s, self.pos, &mut f);
            self.units.push(f);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if matches!(e, Expr::Function(f) if f.over.is_some()) {
            self.window = true;
        }
        ControlFlow::Continue(())
    }
}

fn insert_facts(ins: &Insert, pos: &Positions<'_>, facts: &mut ShardFacts) {
    let TableObject::TableName(name) = &ins.table else {
        return;
    };
    let table = object_name(name);
    facts.tables.push(table.clone());
    let rows = match ins.source.as_deref() {
        Some(q) => match q.body.as_ref() {
            SetExpr::Values(v) if q.with.is_none() => v
                .rows
                .iter()
                .map(|r| r.content.iter().map(|e| value_ref(e, pos)).collect())
                .collect(),
            _ => {
                facts.nested = true;
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    facts.insert = Some(InsertFacts {
        table,
        columns: ins.columns.iter().map(object_name).collect(),
        rows,
        returning: ins.returning.is_some(),
    });
}

/// Facts of one parsed statement.
pub(super) fn facts(stmt: &Statement, pos: &Positions<'_>) -> ShardFacts {
    let mut facts = ShardFacts::default();
    match stmt {
        Statement::Query(q) => {
            facts.command = Command::Select;
            query_facts(q, pos, &mut facts);
        }
        Statement::Insert(ins) => {
            facts.command = Command::Insert;
            insert_facts(ins, pos, &mut facts);
        }
        Statement::Update(u) => {
            facts.command = Command::Update;
            let mut scope = Scope { tables: Vec::new() };
            scope.add_factor(&u.table.relation);
            if u.from.is_some() || !u.table.joins.is_empty() {
                facts.nested = true;
            }
            facts
                .tables
                .extend(scope.tables.iter().map(|(n, _)| n.clone()));
            for a in &u.assignments {
                let names: Vec<&ObjectName> = match &a.target {
                    AssignmentTarget::ColumnName(n) => vec![n],
                    AssignmentTarget::Tuple(ns) => ns.iter().collect(),
                };
                for n in names {
                    if let Some(last) = n.0.last() {
                        facts.set_columns.push(super::part_name(last));
                    }
                }
            }
            if let Some(w) = &u.selection {
                conjuncts(w, &scope, pos, &mut facts);
            }
        }
        Statement::Delete(d) => {
            facts.command = Command::Delete;
            let from = match &d.from {
                FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
            };
            let mut scope = Scope { tables: Vec::new() };
            if !from_list(from, &mut scope) || d.using.is_some() {
                facts.nested = true;
            }
            facts
                .tables
                .extend(scope.tables.iter().map(|(n, _)| n.clone()));
            if let Some(w) = &d.selection {
                conjuncts(w, &scope, pos, &mut facts);
            }
        }
        Statement::Copy { .. } => {
            facts.command = Command::Copy;
            facts.copy = copy_facts(stmt);
            if let Some(c) = &facts.copy {
                facts.tables.push(c.table.clone());
            }
        }
        Statement::CreateTable(_)
        | Statement::AlterTable(_)
        | Statement::Drop { .. }
        | Statement::CreateIndex(_)
        | Statement::Truncate(_)
        | Statement::CreateView(_)
        | Statement::CreateSequence { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateExtension(_)
        | Statement::CreateFunction(_)
        | Statement::CreateType { .. }
        | Statement::Comment { .. }
        | Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::Analyze(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::AlterRole { .. }
        | Statement::DropFunction(_) => facts.command = Command::Broadcast,
        _ => {}
    }
    // Every other SELECT in the statement, and window functions.
    let top = match stmt {
        Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Select(s) => Some(std::ptr::from_ref(s.as_ref())),
            _ => None,
        },
        _ => None,
    };
    let mut units = Units {
        pos,
        top,
        units: Vec::new(),
        window: false,
    };
    let _ = stmt.visit(&mut units);
    facts.units = units.units;
    facts.window = units.window;
    if !facts.units.is_empty() {
        facts.nested = true;
    }
    facts
}

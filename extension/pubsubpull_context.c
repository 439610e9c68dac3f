/*
 * pubsubpull_context: the audit-context trigger and set_context in C.
 *
 * The trigger does what pubsubpull.capture_context() (PL/pgSQL, migrations/source/) does: before
 * each statement on a tracked table, write the transaction's row of pubsubpull.context once.
 * Written in PL/pgSQL, the trigger costs small write transactions about a quarter more server
 * instructions (bench/context): a PL/pgSQL call on every statement, a transaction-local setting as
 * the "row written" marker, and an SQL INSERT through the executor. Here the marker (where the
 * row is) is a variable of the backend, kept right across savepoints by transaction callbacks, and
 * the row goes straight into the heap of the day's partition, as a catalog row does.
 *
 * set_context does what the PL/pgSQL one (migrations/source/0006) does, and keeps the jsonb it was
 * given, so that the trigger need not parse the setting's text back into jsonb.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* The columns of pubsubpull.context this trigger fills, by name (any others are left null). */
typedef enum ContextColumn
{
	COLUMN_XID,
	COLUMN_APP,
	COLUMN_DB_USER,
	COLUMN_APPLICATION_NAME,
	COLUMN_CLIENT_ADDR,
	COLUMN_CREATED_AT,
	CONTEXT_COLUMNS
} ContextColumn;

static const struct
{
	const char *name;
	Oid			type;
	bool		may_be_null;	/* this trigger may leave it null */
}			context_columns[CONTEXT_COLUMNS] = {
	[COLUMN_XID] = {"xid", XID8OID, false},
	[COLUMN_APP] = {"app", JSONBOID, true},
	[COLUMN_DB_USER] = {"db_user", TEXTOID, false},
	[COLUMN_APPLICATION_NAME] = {"application_name", TEXTOID, true},
	[COLUMN_CLIENT_ADDR] = {"client_addr", INETOID, true},
	[COLUMN_CREATED_AT] = {"created_at", TIMESTAMPTZOID, false},
};

/*
 * Where the current transaction's context row is, as each (sub)transaction that wrote it left it:
 * set_context updates it there (in the partition of the transaction's start time, created_at). A
 * rolled-back savepoint takes its versions of the row away, so it takes their places too; a
 * released one hands them to its parent. Kept in TopTransactionContext.
 */
typedef struct WrittenRow
{
	SubTransactionId by;
	ItemPointerData tid;
	struct WrittenRow *before;
} WrittenRow;

static WrittenRow *written = NULL;

/*
 * What every row needs and few transactions change, kept across transactions rather than looked up
 * for each, and forgotten when what it comes from changes: pubsubpull.context's oid, the partition
 * of the current day with its bounds and its columns' positions (below), and the current user's
 * name.
 */
static Oid	context_relid = InvalidOid;
static Oid	user_name_of = InvalidOid;
static NameData user_name;

/*
 * The partition rows of transactions started from `from` to before `to` go to, when a row can go
 * straight into its heap, as a catalog row goes in: one of the day partitions that migrations and
 * pruning create (only these columns, null allowed where this trigger may leave one, no index, no
 * trigger, no check). Anything else (the default partition, an operator's own trigger or index,
 * say) gets its rows through an SQL INSERT into pubsubpull.context, so that it all applies.
 */
static struct
{
	Oid			relid;			/* invalid: none known */
	TimestampTz from;
	TimestampTz to;
	AttrNumber	column_position[CONTEXT_COLUMNS];
}			partition = {InvalidOid};

/* pubsubpull.context, as set_context sets it: a real setting once this library is loaded. */
static char *app_context_text = NULL;

/*
 * The context set_context gave last, as the setting's text and as the jsonb it came from. While the
 * setting still holds that text (a rolled-back savepoint or a SET may have changed it since), the
 * trigger writes this jsonb rather than parse the text back: a quarter of what it costs otherwise.
 */
static char *set_text = NULL;
static Jsonb *set_value = NULL;

static void
forget_row_at_transaction_end(XactEvent event, void *arg)
{
	written = NULL;
}

static void
follow_savepoints(SubXactEvent event, SubTransactionId subtransaction, SubTransactionId parent, void *arg)
{
	/* A subtransaction's versions are the newest: its children have ended before it. */
	if (event == SUBXACT_EVENT_ABORT_SUB)
		while (written != NULL && written->by == subtransaction)
			written = written->before;
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		for (WrittenRow *row = written; row != NULL && row->by == subtransaction; row = row->before)
			row->by = parent;
}

static void
remember_row(ItemPointer tid)
{
	WrittenRow *row = MemoryContextAlloc(TopTransactionContext, sizeof(WrittenRow));

	row->by = GetCurrentSubTransactionId();
	row->tid = *tid;
	row->before = written;
	written = row;
}

static void
forget_context_table(Datum arg, Oid relid)
{
	/* A partition added or dropped changes the table's relcache entry, as any change to it does. */
	if (relid == InvalidOid || relid == context_relid || relid == partition.relid)
	{
		context_relid = InvalidOid;
		partition.relid = InvalidOid;
	}
}

static void
forget_user_name(Datum arg, int cache, uint32 hash)
{
	user_name_of = InvalidOid;
}

void
_PG_init(void)
{
	RegisterXactCallback(forget_row_at_transaction_end, NULL);
	RegisterSubXactCallback(follow_savepoints, NULL);
	CacheRegisterRelcacheCallback(forget_context_table, (Datum) 0);
	CacheRegisterSyscacheCallback(AUTHOID, forget_user_name, (Datum) 0);
	/* Takes over the value, transaction-local or not, that set_context gave it before the load. */
	DefineCustomStringVariable("pubsubpull.context",
							   "The application's audit context of the current transaction (pubsubpull.set_context).",
							   NULL, &app_context_text, "", PGC_USERSET, GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
}

/* The application's context (pubsubpull.set_context), or null when none was set. */
static Datum
app_context(bool *isnull)
{
	*isnull = app_context_text == NULL || app_context_text[0] == '\0';
	if (*isnull)
		return (Datum) 0;
	if (set_text != NULL && strcmp(app_context_text, set_text) == 0)
		return JsonbPGetDatum(set_value);
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(app_context_text));
}

static Datum
db_user_value(void)
{
	Oid			user = GetUserId();

	if (user != user_name_of)
	{
		namestrcpy(&user_name, GetUserNameFromId(user, false));
		user_name_of = user;
	}
	return CStringGetTextDatum(NameStr(user_name));
}

static Datum
application_name_value(bool *isnull)
{
	*isnull = application_name == NULL || application_name[0] == '\0';
	return *isnull ? (Datum) 0 : CStringGetTextDatum(application_name);
}

/* inet_client_addr(): null for a Unix-socket or single-user session. */
static Datum
client_addr_value(bool *isnull)
{
	LOCAL_FCINFO(call, 0);
	Datum		addr;

	InitFunctionCallInfoData(*call, NULL, 0, InvalidOid, NULL, NULL);
	addr = inet_client_addr(call);
	*isnull = call->isnull;
	return addr;
}

/*
 * Where each of context_columns is in the table, checked against what this library expects, so
 * that a schema it does not know is an error rather than a wrong row.
 */
static void
locate_columns(TupleDesc descriptor, AttrNumber *position)
{
	for (int c = 0; c < CONTEXT_COLUMNS; c++)
	{
		position[c] = InvalidAttrNumber;
		for (int a = 0; a < descriptor->natts; a++)
		{
			Form_pg_attribute attribute = TupleDescAttr(descriptor, a);

			if (!attribute->attisdropped && strcmp(NameStr(attribute->attname), context_columns[c].name) == 0
				&& attribute->atttypid == context_columns[c].type)
				position[c] = attribute->attnum;
		}
		if (position[c] == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("pubsubpull.context has no column %s of type %s", context_columns[c].name,
							format_type_be(context_columns[c].type)),
					 errhint("Run pubsubpull migrate, and install the pubsubpull_context library of the same version.")));
	}
}

static Oid
context_table(void)
{
	Oid			relid = get_relname_relid("context", get_namespace_oid("pubsubpull", false));

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation pubsubpull.context does not exist"),
				 errhint("Run pubsubpull migrate.")));
	return relid;
}

/* Whether rows can go straight into this table's heap (see `partition` above). */
static bool
takes_rows_directly(Relation rel)
{
	TupleDesc	descriptor = RelationGetDescr(rel);
	List	   *indexes = RelationGetIndexList(rel);
	bool		indexed = indexes != NIL;
	int			columns = 0;
	bool		nulls_refused = false;
	AttrNumber	position[CONTEXT_COLUMNS];

	list_free(indexes);
	locate_columns(descriptor, position);
	for (int a = 0; a < descriptor->natts; a++)
		columns += !TupleDescAttr(descriptor, a)->attisdropped;
	for (int c = 0; c < CONTEXT_COLUMNS; c++)
		nulls_refused |= context_columns[c].may_be_null && TupleDescAttr(descriptor, position[c] - 1)->attnotnull;
	return rel->rd_rel->relkind == RELKIND_RELATION && columns == CONTEXT_COLUMNS && !nulls_refused && !indexed
		&& rel->trigdesc == NULL && (descriptor->constr == NULL || descriptor->constr->num_check == 0);
}

/*
 * The partition of pubsubpull.context that a row created `at` goes to, and its bounds; invalid for
 * the default partition (or none). The server's own routing, as an INSERT does it.
 */
static Oid
partition_for(Relation context, TimestampTz at, TimestampTz *from, TimestampTz *to)
{
	PartitionKey key = RelationGetPartitionKey(context);
	PartitionBoundInfo bounds = RelationGetPartitionDesc(context, true)->boundinfo;
	Datum		value = TimestampTzGetDatum(at);
	bool		equal;
	int			below;
	int			index;

	if (key->strategy != PARTITION_STRATEGY_RANGE || key->partnatts != 1 || key->partattrs[0] <= 0
		|| strcmp(NameStr(TupleDescAttr(RelationGetDescr(context), key->partattrs[0] - 1)->attname), "created_at") != 0
		|| bounds == NULL)
		return InvalidOid;
	below = partition_range_datum_bsearch(key->partsupfunc, key->partcollation, bounds, 1, &value, &equal);
	index = bounds->indexes[below + 1];
	if (index < 0)
		return InvalidOid;
	*from = below >= 0 && bounds->kind[below][0] == PARTITION_RANGE_DATUM_VALUE
		? DatumGetTimestampTz(bounds->datums[below][0]) : DT_NOBEGIN;
	*to = below + 1 < bounds->ndatums && bounds->kind[below + 1][0] == PARTITION_RANGE_DATUM_VALUE
		? DatumGetTimestampTz(bounds->datums[below + 1][0]) : DT_NOEND;
	return RelationGetPartitionDesc(context, true)->oids[index];
}

/* Learns the partition a row created `at` goes to, if it takes rows directly. */
static void
learn_partition(TimestampTz at)
{
	Relation	context = OidIsValid(context_relid) ? try_table_open(context_relid, AccessShareLock) : NULL;
	Oid			relid;
	TimestampTz from = DT_NOBEGIN;
	TimestampTz to = DT_NOEND;

	if (context == NULL)
		context = table_open(context_table(), AccessShareLock);
	context_relid = RelationGetRelid(context);
	partition.relid = InvalidOid;
	/* The partitioned table's statement triggers would not fire for a row put into a partition. */
	if (context->trigdesc != NULL)
		relid = InvalidOid;
	else if (context->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
		relid = partition_for(context, at, &from, &to);
	else
		relid = context_relid;
	if (OidIsValid(relid))
	{
		Relation	rel = table_open(relid, RowExclusiveLock);

		if (takes_rows_directly(rel))
		{
			locate_columns(RelationGetDescr(rel), partition.column_position);
			partition.from = from;
			partition.to = to;
			partition.relid = relid;
		}
		table_close(rel, NoLock);
	}
	table_close(context, NoLock);
}

/* Puts the row straight into the heap of its partition; false where it cannot (see `partition`). */
static bool
insert_directly(TimestampTz at, const Datum *context, const bool *context_null)
{
	Relation	rel;
	HeapTuple	tuple;
	Datum	   *value;
	bool	   *null;

	if (!OidIsValid(partition.relid) || at < partition.from || at >= partition.to)
		learn_partition(at);
	if (!OidIsValid(partition.relid))
		return false;
	rel = try_table_open(partition.relid, RowExclusiveLock);
	/* Taking the lock read the pending invalidations: a partition that changed was forgotten just now. */
	if (rel == NULL || !OidIsValid(partition.relid))
	{
		if (rel != NULL)
			table_close(rel, NoLock);
		return false;
	}

	value = palloc(RelationGetDescr(rel)->natts * sizeof(Datum));
	null = palloc(RelationGetDescr(rel)->natts * sizeof(bool));
	memset(null, true, RelationGetDescr(rel)->natts * sizeof(bool));
	for (int c = 0; c < CONTEXT_COLUMNS; c++)
	{
		value[partition.column_position[c] - 1] = context[c];
		null[partition.column_position[c] - 1] = context_null[c];
	}
	tuple = heap_form_tuple(RelationGetDescr(rel), value, null);
	simple_heap_insert(rel, tuple);
	remember_row(&tuple->t_self);
	table_close(rel, NoLock);
	return true;
}

/* Where the one row an SPI statement returned (its ctid) is. */
static ItemPointerData
returned_row(void)
{
	bool		null;

	return *(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &null));
}

/* Runs one of this library's statements, planned once per session. */
static void
execute_kept(SPIPlanPtr *plan, const char *statement, int nargs, Oid *types, Datum *value, const char *null,
			 int expected)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	prepared = SPI_prepare(statement, nargs, types);

		if (prepared == NULL || SPI_keepplan(prepared) != 0)
			elog(ERROR, "could not prepare \"%s\": %s", statement, SPI_result_code_string(SPI_result));
		*plan = prepared;
	}
	if (SPI_execute_plan(*plan, value, null, false, 1) != expected || SPI_processed != 1)
		elog(ERROR, "\"%s\" did not write the context row of the current transaction", statement);
}

/* Inserts the row with SQL, so that all the context table has (see `partition`) applies to it. */
static void
insert_with_sql(const Datum *context, const bool *context_null)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[CONTEXT_COLUMNS];
	Datum		value[CONTEXT_COLUMNS];
	char		null[CONTEXT_COLUMNS];
	ItemPointerData tid;

	for (int c = 0; c < CONTEXT_COLUMNS; c++)
	{
		types[c] = context_columns[c].type;
		value[c] = context[c];
		null[c] = context_null[c] ? 'n' : ' ';
	}
	SPI_connect();
	execute_kept(&plan,
				 "INSERT INTO pubsubpull.context (xid, app, db_user, application_name, client_addr, created_at) "
				 "VALUES ($1, $2, $3, $4, $5, $6) RETURNING ctid",
				 CONTEXT_COLUMNS, types, value, null, SPI_OK_INSERT_RETURNING);
	tid = returned_row();
	SPI_finish();
	remember_row(&tid);
}

static void
write_context_row(void)
{
	Datum		context[CONTEXT_COLUMNS];
	bool		context_null[CONTEXT_COLUMNS] = {false};
	TimestampTz at = GetCurrentTransactionStartTimestamp();

	context[COLUMN_XID] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	context[COLUMN_APP] = app_context(&context_null[COLUMN_APP]);
	context[COLUMN_DB_USER] = db_user_value();
	context[COLUMN_APPLICATION_NAME] = application_name_value(&context_null[COLUMN_APPLICATION_NAME]);
	context[COLUMN_CLIENT_ADDR] = client_addr_value(&context_null[COLUMN_CLIENT_ADDR]);
	context[COLUMN_CREATED_AT] = TimestampTzGetDatum(at);
	if (!insert_directly(at, context, context_null))
		insert_with_sql(context, context_null);
}

PG_FUNCTION_INFO_V1(capture_context);

/* The statement-level trigger: writes the transaction's context row, once. */
Datum
capture_context(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_STATEMENT(((TriggerData *) fcinfo->context)->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("pubsubpull.capture_context_native() must be called as a statement-level trigger")));
	if (written == NULL)
		write_context_row();
	return PointerGetDatum(NULL);
}

/*
 * Sets the app column of the transaction's row at `tid` (of the partition of its created_at, the
 * transaction's start time); returns where its new version is.
 */
static ItemPointerData
update_app(Jsonb *context, ItemPointerData tid)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[2] = {JSONBOID, TIDOID};
	Datum		value[2] = {PointerGetDatum(context), PointerGetDatum(&tid)};
	char		null[2] = {context == NULL ? 'n' : ' ', ' '};

	SPI_connect();
	execute_kept(&plan,
				 "UPDATE pubsubpull.context SET app = $1 WHERE created_at OPERATOR(pg_catalog.=) pg_catalog.now() "
				 "AND ctid OPERATOR(pg_catalog.=) $2 RETURNING ctid",
				 2, types, value, null, SPI_OK_UPDATE_RETURNING);
	tid = returned_row();
	SPI_finish();
	return tid;
}

PG_FUNCTION_INFO_V1(set_context);

/*
 * pubsubpull.set_context(jsonb): the same transaction-local setting as the PL/pgSQL one sets (so
 * that either trigger reads it, and a rolled-back savepoint takes it back), the jsonb kept for the
 * trigger, and the row updated if the transaction wrote it already.
 */
Datum
set_context(PG_FUNCTION_ARGS)
{
	Jsonb	   *context = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);
	char	   *text = context == NULL ? "" : JsonbToCString(NULL, &context->root, VARSIZE(context));
	GucContext	setter = superuser() ? PGC_SUSET : PGC_USERSET;
	/* Where the PL/pgSQL trigger wrote the row (0006_context_by_day.sql). */
	const char *plpgsql_written = GetConfigOption("pubsubpull.context_written", true, false);
	ItemPointerData tid;

	(void) set_config_option("pubsubpull.context", text, setter, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	if (set_text != NULL)
	{
		pfree(set_text);
		pfree(set_value);
		set_text = NULL;
	}
	if (context != NULL)
	{
		set_value = MemoryContextAlloc(TopMemoryContext, VARSIZE(context));
		memcpy(set_value, context, VARSIZE(context));
		set_text = MemoryContextStrdup(TopMemoryContext, text);
	}

	/* The row is written already: the context applies to the changes so far. */
	if (written != NULL)
	{
		tid = update_app(context, written->tid);
		remember_row(&tid);
	}
	else if (plpgsql_written != NULL && plpgsql_written[0] != '\0')
	{
		tid = update_app(context, *(ItemPointer) DatumGetPointer(DirectFunctionCall1(tidin, CStringGetDatum(plpgsql_written))));
		(void) set_config_option("pubsubpull.context_written", DatumGetCString(DirectFunctionCall1(tidout, PointerGetDatum(&tid))),
								 setter, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	}
	PG_RETURN_VOID();
}

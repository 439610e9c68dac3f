/*
 * pubsubpull_context: the audit-context trigger and set_context in C.
 *
 * The trigger does what pubsubpull.capture_context() (PL/pgSQL, migrations/source/) does: before
 * each statement on a tracked table, write the transaction's row of pubsubpull.context once.
 * Written in PL/pgSQL, the trigger costs small write transactions about a quarter more server
 * instructions (bench/context): a PL/pgSQL call on every statement, a transaction-local setting as
 * the "row written" marker, and an SQL INSERT through the executor. Here the marker is a
 * variable of the backend, kept right across savepoints by transaction callbacks, and the row goes
 * straight into the heap and the primary key, as a catalog row does.
 *
 * set_context does what the PL/pgSQL one (migrations/source/0005) does, and keeps the jsonb it was
 * given, so that the trigger need not parse the setting's text back into jsonb.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
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
 * The subtransaction that wrote the current transaction's context row, or none. A rolled-back
 * savepoint takes the row away, so it takes the marker too; a released one hands the row to its
 * parent.
 */
static SubTransactionId row_written_in = InvalidSubTransactionId;

/*
 * What every row needs and few transactions change, kept across transactions rather than looked up
 * for each: pubsubpull.context's oid, where its columns are and how a row goes in (below),
 * forgotten when the table changes; the current user's name, forgotten when any role changes.
 */
static Oid	context_relid = InvalidOid;
static AttrNumber column_position[CONTEXT_COLUMNS];
static Oid	user_name_of = InvalidOid;
static NameData user_name;

/*
 * How a row goes in. Into the table as migrations create it (only these columns, null allowed where
 * this trigger may leave one, its one index the primary key on xid, no trigger, no check), straight
 * into the heap and that index, as a catalog row goes in: the executor's insert would cost this
 * trigger a third more. Into anything more (an operator's own trigger or index, say), through the
 * executor as logical replication's apply worker inserts, so that it all applies as to an INSERT.
 */
static Oid	primary_key = InvalidOid;	/* invalid: through the executor */
static IndexInfo *primary_key_info;
static MemoryContext cache_memory;

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
	row_written_in = InvalidSubTransactionId;
}

static void
follow_savepoints(SubXactEvent event, SubTransactionId subtransaction, SubTransactionId parent, void *arg)
{
	if (subtransaction != row_written_in)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		row_written_in = InvalidSubTransactionId;
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		row_written_in = parent;
}

static void
forget_context_table(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == context_relid || relid == primary_key)
		context_relid = InvalidOid;
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

/* Learns the columns of pubsubpull.context, open, and how a row goes in. */
static void
learn_context_table(Relation rel)
{
	TupleDesc	descriptor = RelationGetDescr(rel);
	List	   *indexes = RelationGetIndexList(rel);
	int			columns = 0;
	bool		nulls_refused = false;

	locate_columns(descriptor, column_position);
	for (int a = 0; a < descriptor->natts; a++)
		columns += !TupleDescAttr(descriptor, a)->attisdropped;
	for (int c = 0; c < CONTEXT_COLUMNS; c++)
		nulls_refused |= context_columns[c].may_be_null
			&& TupleDescAttr(descriptor, column_position[c] - 1)->attnotnull;

	if (cache_memory == NULL)
		cache_memory = AllocSetContextCreate(CacheMemoryContext, "pubsubpull context trigger",
											 ALLOCSET_SMALL_SIZES);
	MemoryContextReset(cache_memory);
	primary_key = InvalidOid;
	if (columns == CONTEXT_COLUMNS && !nulls_refused && rel->trigdesc == NULL
		&& (descriptor->constr == NULL || descriptor->constr->num_check == 0)
		&& list_length(indexes) == 1 && linitial_oid(indexes) == RelationGetPrimaryKeyIndex(rel))
	{
		Relation	index = index_open(linitial_oid(indexes), AccessShareLock);
		MemoryContext caller = MemoryContextSwitchTo(cache_memory);
		IndexInfo  *info = BuildIndexInfo(index);

		MemoryContextSwitchTo(caller);
		if (index->rd_rel->relam == BTREE_AM_OID && index->rd_index->indimmediate && info->ii_NumIndexAttrs == 1
			&& info->ii_IndexAttrNumbers[0] == column_position[COLUMN_XID] && info->ii_Expressions == NIL
			&& info->ii_Predicate == NIL)
		{
			primary_key = RelationGetRelid(index);
			primary_key_info = info;
		}
		index_close(index, AccessShareLock);
	}
	list_free(indexes);
	context_relid = RelationGetRelid(rel);
}

static void
insert_directly(Relation rel, Datum *value, bool *null)
{
	Relation	index = index_open(primary_key, RowExclusiveLock);
	HeapTuple	tuple = heap_form_tuple(RelationGetDescr(rel), value, null);

	simple_heap_insert(rel, tuple);
	index_insert(index, &value[column_position[COLUMN_XID] - 1], &null[column_position[COLUMN_XID] - 1],
				 &tuple->t_self, rel, UNIQUE_CHECK_YES, false, primary_key_info);
	index_close(index, NoLock);
	heap_freetuple(tuple);
}

/*
 * Constraints, indexes and any triggers of the context table apply as to an INSERT; its AFTER
 * triggers fire at the end of the statement that fired this one.
 */
static void
insert_with_executor(Relation rel, Datum *value, bool *null)
{
	EState	   *estate = CreateExecutorState();
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	ResultRelInfo *result = makeNode(ResultRelInfo);
	TupleTableSlot *slot;

	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(estate, list_make1(rte));
	InitResultRelInfo(result, rel, 1, NULL, 0);
	estate->es_output_cid = GetCurrentCommandId(true);
	ExecOpenIndices(result, false);

	slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel), &TTSOpsVirtual);
	ExecClearTuple(slot);
	memcpy(slot->tts_values, value, RelationGetDescr(rel)->natts * sizeof(Datum));
	memcpy(slot->tts_isnull, null, RelationGetDescr(rel)->natts * sizeof(bool));
	ExecStoreVirtualTuple(slot);
	ExecSimpleRelationInsert(result, estate, slot);

	ExecCloseIndices(result);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
}

static void
write_context_row(void)
{
	Relation	rel = table_open(OidIsValid(context_relid) ? context_relid : context_table(), RowExclusiveLock);
	int			natts = RelationGetDescr(rel)->natts;
	Datum	   *value = palloc(natts * sizeof(Datum));
	bool	   *null = palloc(natts * sizeof(bool));
	Datum		context[CONTEXT_COLUMNS];
	bool		context_null[CONTEXT_COLUMNS] = {false};

	/* Taking the lock read the pending invalidations: a table that changed was forgotten just now. */
	if (!OidIsValid(context_relid))
		learn_context_table(rel);

	context[COLUMN_XID] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	context[COLUMN_APP] = app_context(&context_null[COLUMN_APP]);
	context[COLUMN_DB_USER] = db_user_value();
	context[COLUMN_APPLICATION_NAME] = application_name_value(&context_null[COLUMN_APPLICATION_NAME]);
	context[COLUMN_CLIENT_ADDR] = client_addr_value(&context_null[COLUMN_CLIENT_ADDR]);
	context[COLUMN_CREATED_AT] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	memset(null, true, natts * sizeof(bool));
	for (int c = 0; c < CONTEXT_COLUMNS; c++)
	{
		value[column_position[c] - 1] = context[c];
		null[column_position[c] - 1] = context_null[c];
	}

	if (OidIsValid(primary_key))
		insert_directly(rel, value, null);
	else
		insert_with_executor(rel, value, null);
	table_close(rel, NoLock);
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
	if (row_written_in == InvalidSubTransactionId)
	{
		write_context_row();
		row_written_in = GetCurrentSubTransactionId();
	}
	return PointerGetDatum(NULL);
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
	const char *plpgsql_marker = GetConfigOption("pubsubpull.context_written", true, false);

	(void) set_config_option("pubsubpull.context", text, superuser() ? PGC_SUSET : PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
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

	/* The row is written already (by either trigger): the context applies to the changes so far. */
	if (row_written_in != InvalidSubTransactionId || (plpgsql_marker != NULL && strcmp(plpgsql_marker, "on") == 0))
	{
		Oid			type = JSONBOID;
		Datum		value = PointerGetDatum(context);
		char		null = context == NULL ? 'n' : ' ';

		SPI_connect();
		if (SPI_execute_with_args("UPDATE pubsubpull.context SET app = $1 WHERE xid = pg_current_xact_id()",
								  1, &type, &value, &null, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update the context row of the current transaction");
		SPI_finish();
	}
	PG_RETURN_VOID();
}

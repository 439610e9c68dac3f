/*
 * pubsubpull_context: the audit-context trigger in C.
 *
 * It does what pubsubpull.capture_context() (PL/pgSQL, migrations/source/) does: before each
 * statement on a tracked table, write the transaction's row of pubsubpull.context once. Written
 * in PL/pgSQL, the trigger costs small write transactions a quarter to a third more server
 * instructions (bench/context): a PL/pgSQL call on every statement, a transaction-local setting as
 * the "row written" marker, and an SQL INSERT through the executor. Here the marker is a
 * variable of the backend, kept right across savepoints by transaction callbacks, and the row is
 * inserted as logical replication's apply worker inserts one: straight into the heap and its
 * indexes.
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
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
}			context_columns[CONTEXT_COLUMNS] = {
	[COLUMN_XID] = {"xid", XID8OID},
	[COLUMN_APP] = {"app", JSONBOID},
	[COLUMN_DB_USER] = {"db_user", TEXTOID},
	[COLUMN_APPLICATION_NAME] = {"application_name", TEXTOID},
	[COLUMN_CLIENT_ADDR] = {"client_addr", INETOID},
	[COLUMN_CREATED_AT] = {"created_at", TIMESTAMPTZOID},
};

/*
 * The subtransaction that wrote the current transaction's context row, or none. A rolled-back
 * savepoint takes the row away, so it takes the marker too; a released one hands the row to its
 * parent.
 */
static SubTransactionId row_written_in = InvalidSubTransactionId;

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

void
_PG_init(void)
{
	RegisterXactCallback(forget_row_at_transaction_end, NULL);
	RegisterSubXactCallback(follow_savepoints, NULL);
}

/* The application's context (pubsubpull.set_context), or null when none was set. */
static Datum
app_context(bool *isnull)
{
	const char *text = GetConfigOption("pubsubpull.context", true, false);

	*isnull = text == NULL || text[0] == '\0';
	return *isnull ? (Datum) 0 : DirectFunctionCall1(jsonb_in, CStringGetDatum(text));
}

static Datum
application_name_value(bool *isnull)
{
	const char *name = GetConfigOption("application_name", false, false);

	*isnull = name == NULL || name[0] == '\0';
	return *isnull ? (Datum) 0 : CStringGetTextDatum(name);
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

static void
write_context_row(void)
{
	Oid			relid = get_relname_relid("context", get_namespace_oid("pubsubpull", false));
	Relation	rel;
	TupleDesc	descriptor;
	AttrNumber	position[CONTEXT_COLUMNS];
	EState	   *estate;
	RangeTblEntry *rte;
	ResultRelInfo *result;
	TupleTableSlot *slot;
	Datum		value[CONTEXT_COLUMNS];
	bool		null[CONTEXT_COLUMNS] = {false};

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation pubsubpull.context does not exist"),
				 errhint("Run pubsubpull migrate.")));
	rel = table_open(relid, RowExclusiveLock);
	descriptor = RelationGetDescr(rel);
	locate_columns(descriptor, position);

	/* The executor state that logical replication's apply worker sets up for one insert. */
	estate = CreateExecutorState();
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(estate, list_make1(rte));
	result = makeNode(ResultRelInfo);
	InitResultRelInfo(result, rel, 1, NULL, 0);
	estate->es_output_cid = GetCurrentCommandId(true);
	ExecOpenIndices(result, false);

	value[COLUMN_XID] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	value[COLUMN_APP] = app_context(&null[COLUMN_APP]);
	value[COLUMN_DB_USER] = CStringGetTextDatum(GetUserNameFromId(GetUserId(), false));
	value[COLUMN_APPLICATION_NAME] = application_name_value(&null[COLUMN_APPLICATION_NAME]);
	value[COLUMN_CLIENT_ADDR] = client_addr_value(&null[COLUMN_CLIENT_ADDR]);
	value[COLUMN_CREATED_AT] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());

	slot = ExecInitExtraTupleSlot(estate, descriptor, &TTSOpsVirtual);
	ExecClearTuple(slot);
	memset(slot->tts_isnull, true, descriptor->natts * sizeof(bool));
	for (int c = 0; c < CONTEXT_COLUMNS; c++)
	{
		slot->tts_values[position[c] - 1] = value[c];
		slot->tts_isnull[position[c] - 1] = null[c];
	}
	ExecStoreVirtualTuple(slot);

	/*
	 * Constraints, indexes and any triggers of the context table apply as to an INSERT; its AFTER
	 * triggers fire at the end of the statement that fired this one.
	 */
	ExecSimpleRelationInsert(result, estate, slot);

	ExecCloseIndices(result);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
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

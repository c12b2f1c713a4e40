import bisect
import collections
import copy
import heapq


def main(x):
    counts = collections.Counter("mississippi")
    dq = collections.deque(range(5), maxlen=4)
    dq.appendleft(-1)
    dq.rotate(1)
    dd = collections.defaultdict(list)
    for word in ["apple", "avocado", "banana", "blueberry", "cherry"]:
        dd[word[0]].append(word)
    Point = collections.namedtuple("Point", "x y")
    od = collections.OrderedDict([("b", 2), ("a", 1)])
    od.move_to_end("b")
    heap = [5, 1, 8, 3, 9, 2]
    heapq.heapify(heap)
    smallest = [heapq.heappop(heap) for _ in range(3)]
    sorted_list = [1, 3, 5, 7]
    bisect.insort(sorted_list, 4)
    nested = {"a": [1, {"b": [2, 3]}]}
    deep = copy.deepcopy(nested)
    deep["a"][1]["b"].append(4)
    chain = collections.ChainMap({"a": 1}, {"a": 2, "b": 3})
    return {
        "counter": counts.most_common(2),
        "deque": list(dq),
        "defaultdict": dict(dd),
        "namedtuple": [Point(1, 2)._asdict(), Point(3, 4).x],
        "ordered": list(od.items()),
        "heap": [smallest, heapq.nlargest(2, [4, 1, 7, 3]), list(heapq.merge([1, 4], [2, 3]))],
        "bisect": [sorted_list, bisect.bisect_left(sorted_list, 5), bisect.bisect_right([1, 2, 2, 3], 2)],
        "deepcopy": [nested, deep],
        "chainmap": [chain["a"], chain["b"], sorted(chain)],
        "slicing": [list(range(10))[::3], list(range(10))[-3:], "abcdef"[1:5:2]],
        "unpacking": [(lambda a, *b, c=0: [a, b, c])(1, 2, 3, c=4), {**{"a": 1}, **{"b": 2}}, [*range(3), *"ab"]],
        "sorting": [sorted([(2, "b"), (1, "z"), (2, "a")]), sorted("hello", reverse=True), sorted([3, -1, 2], key=abs)],
    }
